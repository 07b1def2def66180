"""The workflow as Snakemake sees it: lint-clean, complete plans, reruns only what a change affects."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from conftest import REPO, planned_jobs, repo_config, snakemake, write_config


def _run_caption_sources(cfg: dict) -> set[str]:
    d = cfg["runs"]["demo"]["data"][0]
    return {d["caption_source"], d["extra_caption_source"]}


def _llava_tasks(cfg: dict) -> tuple[int, int]:
    """The demo LLaVA run's benchmarks: all of them, and those answered by generation (not VQAScore)."""
    tasks = cfg["llava_runs"]["llava_demo"]["eval"]
    return len(tasks), sum(cfg["llava_eval_tasks"][t]["kind"] != "vqascore" for t in tasks)


def test_lint_has_no_findings():
    proc = snakemake(REPO, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_has_nothing_to_change():
    """The workflow catalog's formatting: Snakefile and workflow/rules/*.smk as snakefmt writes them."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_demo_dry_run_is_complete(workdir):
    # how fast it plans is measured by benchmarks/dag.py, not asserted here
    write_config(workdir, repo_config())
    proc = snakemake(workdir, "-n")
    jobs = planned_jobs(proc.stdout)
    cfg = repo_config()
    n = cfg["datasets"]["shapes"]["n_chunks"]
    n_sources = len(_run_caption_sources(cfg))
    n_tasks = len(cfg["runs"]["demo"]["eval"])
    n_llava, n_generated = _llava_tasks(cfg)
    assert jobs == {
        "demo_shapes": 1, "normalize_urls": 1, "split_urls_shapes": 1, "download_chunk": n,
        "filter_chunk": n, "cleanup_shapes": 1, "build_tiny_backbone": 1, "encode_images": n,
        "encode_texts": n * n_sources, "align": 1, "demo_eval_sets": 1, "eval_image_features": n_tasks,
        "eval_text_features": n_tasks, "evaluate": n_tasks, "eval_summary": 1, "report_training": 1, "report_data": 1,
        "report_retrieval": 1, "report_metrics": 1, "report_summary": 1, "report_zeroshot": 2, "report_pairs": 2,
        "build_tiny_llm": 1, "llava_demo_data": 1, "llava_pretrain": 1, "llava_finetune": 1, "report_llava_training": 1,
        "llava_demo_eval_sets": 1, "llava_answers": n_generated, "llava_score": n_generated, "llava_vqascore": n_llava - n_generated,
        "llava_eval_summary": 1,
        "report_llava_examples": 1, "all": 1,
    }


def test_real_datasets_plan_without_network(workdir):
    cfg = repo_config()
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", "results/data/cc3m/manifest.json", "results/data/cc12m/manifest.json")
    jobs = planned_jobs(proc.stdout)
    n = cfg["datasets"]["cc3m"]["n_chunks"] + cfg["datasets"]["cc12m"]["n_chunks"]
    assert jobs["fetch_source"] == 2 and jobs["download_chunk"] == n and jobs["filter_chunk"] == n


def test_sail_l_runs_plan_to_eval_json(workdir):
    """Both SAIL-L runs, with the real datasets' chunk counts and no data or evaluation sets on disk
    (their planning time is measured by benchmarks/dag.py)."""
    cfg = repo_config()
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", "results/sail_l_nv2/eval.json", "results/sail_l_gte/eval.json", "--cores", "32", "--resources", "gpu=8")
    jobs = planned_jobs(proc.stdout)
    chunks = sum(cfg["datasets"][d["dataset"]]["n_chunks"] for d in cfg["runs"]["sail_l_nv2"]["data"])
    n_tasks = len(cfg["runs"]["sail_l_nv2"]["eval"])
    assert jobs["download_chunk"] == chunks and jobs["encode_images"] == chunks  # one vision backbone, shared
    assert jobs["encode_texts"] == 2 * 2 * chunks  # two text backbones x (positive + extra caption source)
    assert jobs["align"] == 2 and jobs["evaluate"] == 2 * n_tasks and jobs["eval_summary"] == 2
    assert jobs["eval_image_features"] == n_tasks and jobs["eval_text_features"] == 2 * n_tasks
    # the evaluation sets are not on this machine: planning warns, naming the config key and path
    assert "eval_tasks.imagenet1k: data/eval/imagenet/val does not exist" in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_demo_chain_writes_eval_json_and_a_report(demo, monkeypatch):
    workdir, cfg = demo
    summary = json.loads((workdir / "results/demo/eval.json").read_text())
    tasks = cfg["runs"]["demo"]["eval"]
    assert list(summary["tasks"]) == tasks
    assert summary["vision"] == "tiny_dinov2" and summary["text"] == "minilm" and len(summary["fingerprint"]) == 16
    assert summary["git"] is None or len(summary["git"]["commit"]) == 40
    d = cfg["demo"]
    assert summary["data"]["datasets"]["shapes"]["input_rows"] == d["n_train"] and summary["data"]["train_pairs"] > 0
    for task in tasks:  # every metric of every task, merged from the per-task files
        per_task = json.loads((workdir / f"results/demo/eval/{task}.json").read_text())
        assert per_task["model"] == "demo" and per_task["dataset"] == task
        for k, v in per_task["metrics"].items():
            assert summary["metrics"][f"{task}/{k}"] == v
            assert v is None or 0.0 <= v <= 1.0
    # the held-out evaluation sets: every held-out image, 5 captions each; pairs as configured
    assert summary["tasks"]["demo_retrieval"]["counts"] == {"images": d["n_eval"], "captions": 5 * d["n_eval"]}
    assert summary["tasks"]["demo_shape"]["counts"]["images"] == d["n_eval"]
    assert summary["tasks"]["demo_winoground"]["counts"] == {"examples": d["eval_sets"]["winoground_examples"]}
    assert summary["tasks"]["demo_mmvp"]["counts"] == {"pairs": 5 * d["eval_sets"]["mmvp_pairs_per_pattern"], "patterns": 5}
    assert "nothing to be done" in snakemake(workdir, "-n").stdout.lower()

    # outside Snakemake, the assembled model (backbones + head, three lines) embeds the evaluation set
    # as the pipeline's stored backbone features + head do (those are fp16, hence the tolerance)
    from sailflow.align.heads import AlignmentHead
    from sailflow.evaluate import tasks as eval_tasks
    from sailflow.evaluate.features import HeadOverFeatures, load_features
    from sailflow.model import AlignedModel

    monkeypatch.chdir(workdir)  # the config's paths are relative to the workflow's folder
    model = AlignedModel.from_run("results/demo")
    spec = cfg["eval_tasks"]["demo_retrieval"]
    data = eval_tasks.load(spec)
    stored = load_features("results/eval/demo_retrieval/image/tiny_dinov2.safetensors", eval_tasks.images_of(spec, data))
    cached = HeadOverFeatures(AlignmentHead.load("results/demo/align"), data.images, stored, [], torch.zeros(0, 1))
    cos = (model.encode_image(data.images) * cached.encode_image(data.images)).sum(-1)
    assert float(cos.min()) > 0.999
    direct = eval_tasks.run(model, spec)["metrics"]
    assert direct.keys() == summary["tasks"]["demo_retrieval"]["metrics"].keys()

    snakemake(workdir, "--report", "report.html")
    page = (workdir / "report.html").read_text()
    for needle in ("summary.html", "training.svg", "metrics.html", "data.html", "retrieval_demo_retrieval.png", "misses_demo_retrieval.png",
                   "confusion_demo_shape.svg", "confusion_demo_colour.svg", "pairs_demo_winoground.png", "pairs_demo_mmvp.png",
                   "llava_training.svg"):
        assert needle in page
    metrics = (workdir / "results/report/metrics.html").read_text()
    assert all(t in metrics for t in tasks) and "image_retrieval_recall@1" in metrics and "chance" in metrics
    # the landing page (the workflow description, shown without a click): every metric beside its
    # chance, the held-out R@1 and the data funnel, as in eval.json and the manifest
    start = page.index("var workflow_desc = ") + len("var workflow_desc = ")
    landing = json.JSONDecoder().raw_decode(page, start)[0]
    for task, r in summary["tasks"].items():
        assert task in landing
        for k, v in r["metrics"].items():
            c = r["chance"][k]
            value = "–" if v is None else f"{v:.4f}"
            chance = "–" if c is None else f"{c:.4f}"
            assert re.search(rf">{re.escape(k)}</td><td( class='\w+')?>{value}</td><td>{chance}</td>", landing), (task, k)
    h = summary["align"]["holdout"]
    assert f">{h['text_to_image_r1']:.4f}</td><td>{h['chance']:.4f}</td>" in landing
    assert f">source rows</span></td><td>{d['n_train']:,}</td>" in landing
    assert f">= training pairs</span></td><td>{summary['data']['train_pairs']:,}</td>" in landing
    shape = json.loads((workdir / "results/demo/eval/demo_shape.json").read_text())  # what the confusion matrix is drawn from
    assert sum(n for _, _, n in shape["confusion"]["counts"]) == shape["counts"]["images"]
    assert sum(n for t, p, n in shape["confusion"]["counts"] if t == p) / shape["counts"]["images"] == pytest.approx(shape["metrics"]["acc1"])


@pytest.mark.e2e
def test_config_changes_rerun_only_what_depends_on_them(demo):
    workdir, original = demo
    try:
        _rerun_scopes(workdir, copy.deepcopy(original))
    finally:  # the session's demo stays up to date for the next test
        write_config(workdir, original)


def _rerun_scopes(workdir, cfg):
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    n_tasks = len(cfg["runs"]["demo"]["eval"])
    # what follows a new head: scoring (not the evaluation sets' backbone features), summary, report
    after_head = {"evaluate": n_tasks, "eval_summary": 1, "report_training": 1, "report_retrieval": 1, "report_metrics": 1,
                  "report_zeroshot": 2, "report_pairs": 2, "report_summary": 1, "all": 1}
    n_llava, n_generated = _llava_tasks(cfg)
    # what follows a new LLaVA stage 2: every benchmark's generation and score, their summary and report
    after_stage2 = {"llava_answers": n_generated, "llava_score": n_generated, "llava_vqascore": n_llava - n_generated,
                    "llava_eval_summary": 1, "report_llava_examples": 1, "report_metrics": 1, "all": 1}
    after_llava_head = {**after_head, **after_stage2, "llava_pretrain": 1, "llava_finetune": 1, "report_llava_training": 1}  # the demo LLaVA run's tower is this head

    # an alignment setting: the alignment and what follows it, not encoding
    cfg["runs"]["demo"]["align"]["lr"] = 5e-4
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"align": 1, **after_llava_head}
    cfg["align"]["log_every"] = 3  # logging interval only: nothing
    cfg["runs"]["demo"]["align"]["lr"] = 1e-3
    write_config(workdir, cfg)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    n = cfg["datasets"]["shapes"]["n_chunks"]
    n_text = n * len(_run_caption_sources(cfg))  # the caption sources the demo run trains on

    # evaluation settings: only evaluation jobs. New prompts for one task re-encode its prompts only;
    # retrieval's R@k rescores retrieval only.
    cfg["eval_tasks"]["demo_shape"]["templates"] = ["a drawing of a {c}."]
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"eval_text_features": 1, "evaluate": 1, "eval_summary": 1, "report_metrics": 1,
                                                              "report_zeroshot": 1, "report_summary": 1, "all": 1}
    cfg["eval_tasks"]["demo_shape"]["templates"] = repo_config()["eval_tasks"]["demo_shape"]["templates"]
    cfg["eval"]["recall_k"] = [1, 2]
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"evaluate": 1, "eval_summary": 1, "report_retrieval": 1, "report_metrics": 1,
                                                              "report_summary": 1, "all": 1}
    cfg["eval"]["recall_k"] = [1, 5, 10]
    write_config(workdir, cfg)

    # only the text backbone changes: text encoding and what reads it, no image encoding, no data
    cfg["backbones"]["minilm"]["max_length"] = 64
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"encode_texts": n_text, "align": 1, "eval_text_features": n_tasks, **after_llava_head}

    # an image filter option: filtering and everything after it, but no download and no evaluation set
    cfg["backbones"]["minilm"]["max_length"] = 128
    cfg["datasets"]["shapes"]["filter"]["min_side"] = 40
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {
        "filter_chunk": n, "cleanup_shapes": 1, "encode_images": n, "encode_texts": n_text, "align": 1, "report_data": 1, **after_llava_head,
    }

    # LLaVA: a stage-2 setting reruns stage 2 only; a stage-1 setting reruns both stages (stage 2 starts from stage 1)
    cfg["datasets"]["shapes"]["filter"]["min_side"] = 32
    cfg["llava_runs"]["llava_demo"]["finetune"]["lr"] = 5e-4
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"llava_finetune": 1, "report_llava_training": 1, **after_stage2}
    cfg["llava_runs"]["llava_demo"]["finetune"]["lr"] = repo_config()["llava_runs"]["llava_demo"]["finetune"]["lr"]
    cfg["llava_runs"]["llava_demo"]["pretrain"]["lr"] = 5e-4
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"llava_pretrain": 1, "llava_finetune": 1, "report_llava_training": 1,
                                                              **after_stage2}
    cfg["llava_runs"]["llava_demo"]["pretrain"].pop("lr")
    # the tower's token pooling: both stages; the system prompt (a stage-2 setting): stage 2
    cfg["llava_runs"]["llava_demo"]["tower"]["pool"] = 4
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"llava_pretrain": 1, "llava_finetune": 1, "report_llava_training": 1,
                                                              **after_stage2}
    cfg["llava_runs"]["llava_demo"]["tower"]["pool"] = repo_config()["llava_runs"]["llava_demo"]["tower"]["pool"]
    cfg["llava_runs"]["llava_demo"]["finetune"]["system_prompt"] = "You are a helpful assistant."
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"llava_finetune": 1, "report_llava_training": 1, **after_stage2}
    cfg["llava_runs"]["llava_demo"]["finetune"]["system_prompt"] = repo_config()["llava_runs"]["llava_demo"]["finetune"]["system_prompt"]
    # the demo instruction set's VQAScore share: the set, the demo LLM (pre-trained on its texts), both stages; no SAIL job
    cfg["demo"]["llava_vqascore_turns"] = 0.5
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {"llava_demo_data": 1, "build_tiny_llm": 1, "llava_pretrain": 1, "llava_finetune": 1,
                                                              "report_llava_training": 1, **after_stage2}
    cfg["demo"]["llava_vqascore_turns"] = repo_config()["demo"]["llava_vqascore_turns"]
    cfg["llava"]["checkpoint_every"] = 7  # checkpoint interval only: nothing
    cfg["llava_eval"]["batch_size"] = 5  # generation batch size only (the same answers): nothing
    cfg["llava_runs"]["llava_demo"]["finetune"]["dataloader_workers"] = 2  # loader processes (the same batches): nothing
    write_config(workdir, cfg)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout

    # a benchmark's response suffix or max_new_tokens: that benchmark's generation and score only (no
    # other benchmark, no SAIL evaluation)
    one_benchmark = {"llava_answers": 1, "llava_score": 1, "llava_eval_summary": 1, "report_llava_examples": 1, "report_metrics": 1, "all": 1}
    cfg["llava_eval_tasks"]["demo_vqa"]["suffix"] = "\nAnswer with one word."
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == one_benchmark
    cfg["llava_eval_tasks"]["demo_vqa"].pop("suffix")
    cfg["llava_eval_tasks"]["demo_pope"]["max_new_tokens"] = 8
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == one_benchmark
    cfg["llava_eval_tasks"]["demo_pope"]["max_new_tokens"] = repo_config()["llava_eval_tasks"]["demo_pope"]["max_new_tokens"]
    # how a benchmark is scored (not what is asked): its score only, the answers stay
    cfg["llava_eval_tasks"]["demo_vqa"]["normalize"] = "official"
    write_config(workdir, cfg)
    assert planned_jobs(snakemake(workdir, "-n").stdout) == {k: v for k, v in one_benchmark.items() if k != "llava_answers"}
    cfg["llava_eval_tasks"]["demo_vqa"].pop("normalize")

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

    # the download's success-rate gate: every chunk passed it, so a new rate reruns nothing
    cfg["datasets"]["shapes"]["download"] = {**repo_config()["datasets"]["shapes"]["download"], "min_success_rate": 0.25}
    write_config(workdir, cfg)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout

    # a backbone's pinned revision is a param of its encoding: image encoding and what follows, no text
    cfg["backbones"]["tiny_dinov2"]["revision"] = "v2"
    write_config(workdir, cfg)
    jobs = planned_jobs(snakemake(workdir, "-n").stdout)
    assert jobs["encode_images"] == n and jobs["eval_image_features"] == n_tasks and jobs["align"] == 1
    assert "encode_texts" not in jobs and "download_chunk" not in jobs
