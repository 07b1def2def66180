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
    assert jobs == {
        "demo_shapes": 1, "normalize_urls": 1, "split_urls_shapes": 1, "download_chunk": 4,
        "filter_chunk": 4, "cleanup_shapes": 1, "all": 1,
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
def test_changing_a_filter_option_reruns_filter_not_download(workdir):
    cfg = repo_config()
    cfg["demo"].update(n_train=40, n_eval=8)
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout

    cfg["datasets"]["shapes"]["filter"]["min_side"] = 200  # every 96-px demo image is now too small
    write_config(workdir, cfg)
    jobs = planned_jobs(snakemake(workdir, "-n").stdout)
    assert jobs == {"filter_chunk": 4, "cleanup_shapes": 1, "all": 1}

    cfg["datasets"]["shapes"]["filter"]["processes"] = 2  # parallelism only: nothing reruns
    cfg["datasets"]["shapes"]["filter"]["min_side"] = 32
    cfg["datasets"]["shapes"]["download"]["threads"] = 4
    write_config(workdir, cfg)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout

    cfg["datasets"]["shapes"]["download"]["timeout"] = 3
    write_config(workdir, cfg)
    jobs = planned_jobs(snakemake(workdir, "-n").stdout)
    assert jobs == {"download_chunk": 4, "filter_chunk": 4, "cleanup_shapes": 1, "all": 1}
