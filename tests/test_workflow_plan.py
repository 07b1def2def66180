"""The workflow as Snakemake sees it: lint-clean, fast to plan, reruns only what a change affects."""

from __future__ import annotations

import re
import time

import pytest

from conftest import REPO, repo_config, snakemake, write_config


def planned_jobs(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_lint_has_no_findings():
    proc = snakemake(REPO, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_demo_dry_run_is_fast_and_complete(workdir):
    write_config(workdir, repo_config())
    t = time.perf_counter()
    proc = snakemake(workdir, "-n")
    elapsed = time.perf_counter() - t
    jobs = planned_jobs(proc.stdout)
    cfg = repo_config()
    n = cfg["datasets"]["shapes"]["n_chunks"]
    n_sources = len(cfg["datasets"]["shapes"]["caption_sources"])
    assert jobs == {
        "demo_shapes": 1, "normalize_urls": 1, "split_urls_shapes": 1, "download_chunk": n,
        "filter_chunk": n, "cleanup_shapes": 1, "build_tiny_backbone": 1, "encode_images": n,
        "encode_texts": n * n_sources, "check_embeddings": 1, "align": 1, "all": 1,
    }
    assert elapsed < 10, f"dry run took {elapsed:.1f} s"


def test_real_datasets_plan_without_network(workdir):
    cfg = repo_config()
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", "results/data/cc3m/manifest.json", "results/data/cc12m/manifest.json")
    jobs = planned_jobs(proc.stdout)
    n = cfg["datasets"]["cc3m"]["n_chunks"] + cfg["datasets"]["cc12m"]["n_chunks"]
    assert jobs["fetch_source"] == 2 and jobs["download_chunk"] == n and jobs["filter_chunk"] == n


@pytest.mark.e2e
def test_config_changes_rerun_only_what_depends_on_them(workdir):
    cfg = repo_config()
    cfg["demo"].update(n_train=40, n_eval=8)
    cfg["runs"]["demo"]["align"].update(batch_size=16, epochs=2, checkpoint_every=1)
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout

    # an alignment setting: only the alignment (and what will follow it), not encoding
    cfg["runs"]["demo"]["align"]["lr"] = 5e-4
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"align": 1, "all": 1}
    cfg["align"]["log_every"] = 3  # logging interval only: nothing
    cfg["runs"]["demo"]["align"]["lr"] = 1e-3
    write_config(workdir, cfg)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    n = cfg["datasets"]["shapes"]["n_chunks"]
    n_text = n * len(cfg["datasets"]["shapes"]["caption_sources"])

    # only the text backbone changes: text encoding and what reads it, no image encoding, no data
    cfg["backbones"]["minilm"]["max_length"] = 64
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"encode_texts": n_text, "check_embeddings": 1, "align": 1, "all": 1}

    # an image filter option: filtering and everything after it, but no download
    cfg["backbones"]["minilm"]["max_length"] = 128
    cfg["datasets"]["shapes"]["filter"]["min_side"] = 40
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {
        "filter_chunk": n, "cleanup_shapes": 1, "encode_images": n, "encode_texts": n_text, "check_embeddings": 1,
        "align": 1, "all": 1,
    }

    # parallelism and batch sizes only: nothing reruns
    cfg["datasets"]["shapes"]["filter"].update(min_side=32, processes=2)
    cfg["datasets"]["shapes"]["download"]["threads"] = 4
    cfg["encode"].update(workers=1, text_batch_size=7)
    cfg["backbones"]["tiny_dinov2"]["batch_size"] = 3
    write_config(workdir, cfg)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout

    # a download option: from the download on
    cfg["datasets"]["shapes"]["download"]["timeout"] = 3
    write_config(workdir, cfg)
    jobs = planned_jobs(snakemake(workdir, "-n").stdout)
    assert jobs["download_chunk"] == n and "demo_shapes" not in jobs and "normalize_urls" not in jobs
