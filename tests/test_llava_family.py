"""The LLaVA family as configurations of one DAG: CLIP-FlanT5 (an encoder-decoder LLM), Quilt-LLaVA (a CLIP tower
of another geometry, Quilt-VQA), REMGCL (stage 2 with its contrastive terms). The real runs plan; the tiny
variants train end to end on the demo's shapes and are scored. (miniVLM: tests/test_minivlm.py.)"""

from __future__ import annotations

import copy
import json
import math

import pytest

from conftest import placeholders, planned_jobs, repo_config, snakemake, train_losses, write_config

REAL_RUNS = ("clip_flant5_xl", "quilt_llava_7b", "remgcl_7b")
DEMO_RUNS = ("clip_flant5_demo", "quilt_demo", "remgcl_demo")


@pytest.mark.parametrize("run", REAL_RUNS)
def test_real_family_runs_plan_to_their_benchmarks(workdir, run):
    """With the run's records and benchmark files on disk (empty stand-ins: a dry run only checks they exist),
    `snakemake -n results/{run}/llava_eval.json` plans both stages and every benchmark; no export for T5."""
    cfg = repo_config()
    write_config(workdir, cfg)
    placeholders(workdir, cfg, run)
    proc = snakemake(workdir, "-n", f"results/{run}/llava_eval.json", "--cores", "32", "--resources", "gpu=8")
    jobs = planned_jobs(proc.stdout)
    tasks = cfg["llava_runs"][run]["eval"]
    generated = [t for t in tasks if cfg["llava_eval_tasks"][t]["kind"] != "vqascore"]
    assert jobs["llava_pretrain"] == 1 and jobs["llava_finetune"] == 1 and jobs["llava_eval_summary"] == 1
    assert jobs.get("llava_answers", 0) == len(generated) and jobs.get("llava_vqascore", 0) == len(tasks) - len(generated)
    ocr = {d["json"] for d in cfg["llava_runs"][run]["finetune"]["data"] if d["json"].startswith("results/ocr/")}
    assert jobs.get("ocr", 0) == len(ocr) == (2 if run == "remgcl_7b" else 0)  # REMGCL's records get their OCR regions
    assert "llava_export" not in jobs  # llava_eval.json needs no export (and a T5 run has none)


def test_family_runs_state_the_papers_settings():
    """The config rows reproduce the papers: the settings a reader would check first."""
    cfg = repo_config()
    runs = cfg["llava_runs"]
    t5 = runs["clip_flant5_xl"]
    assert cfg["llms"][t5["llm"]]["path"] == "google/flan-t5-xl"
    assert (t5["pretrain"]["template"], t5["pretrain"]["lr"], t5["finetune"]["template"]) == ("t5_plain_split_text", 1e-2, "t5_v1")
    assert t5["pretrain"]["precision"] == t5["finetune"]["precision"] == "bf16"  # T5 overflows in fp16
    assert t5["finetune"]["global_batch_size"] == 96
    quilt = runs["quilt_llava_7b"]
    assert cfg["backbones"][quilt["tower"]["backbone"]]["path"].endswith("wisdomik/QuiltNet-B-32")
    assert quilt["finetune"]["group_by_modality_length"] is False and quilt["eval"] == ["quilt_vqa"]
    remgcl = runs["remgcl_7b"]["finetune"]["remgcl"]
    assert (remgcl["lambda_global"], remgcl["lambda_local"], remgcl["temperature_global"], remgcl["temperature_local"]) == (0.01, 0.01, 0.5, 0.5)
    assert cfg["backbones"][runs["remgcl_7b"]["tower"]["backbone"]]["path"] == "openai/clip-vit-large-patch14"  # 224 px: 16 x 16


def test_a_clip_tower_takes_its_token_count_and_width_from_its_config(tmp_path):
    """Quilt-LLaVA's QuiltNet-B-32 (224 px / 32) gives 7 x 7 = 49 tokens, CLIP-L/336 24 x 24 = 576: nothing is
    hard-coded; a tiny CLIP with B/32's geometry gives 49 tokens of its hidden size."""
    from transformers import CLIPVisionConfig

    from sailflow.backbones.tiny import build_tiny
    from sailflow.llava.towers import load_tower

    path = build_tiny("clip", tmp_path / "clip_b32", image_size=224, patch_size=32)
    spec = {"kind": "vision", "family": "clip", "path": str(path), "name": "tiny_b32"}
    tower = load_tower({"kind": "clip", "name": "tiny_b32", "backbone": spec, "layer": -2})
    hidden = CLIPVisionConfig.from_pretrained(str(path)).hidden_size
    assert (tower.n_tokens, tower.hidden_size) == (49, hidden)


@pytest.mark.e2e
def test_family_demo_variants_train_and_are_scored(demo_copy):
    """On the demo's shapes: CLIP-FlanT5 with a tiny T5 (VQAScore on the demo Winoground set, with its chance
    level), Quilt-LLaVA's recipe with a tiny CLIP tower (no modality grouping), REMGCL with the shapes' names at
    their boxes as OCR regions (both terms logged, finite, non-zero); the report shows their curves and their
    metrics beside the demo's. Short schedules: the test shows the wiring, the demo's LLaVA run the learning."""
    demo, original = demo_copy
    cfg = copy.deepcopy(original)
    for run in DEMO_RUNS:
        cfg["llava_runs"][run]["pretrain"]["epochs"] = 0.5
        cfg["llava_runs"][run]["finetune"]["epochs"] = 0.25
    cfg["report"]["runs"] = [*original["report"]["runs"], *DEMO_RUNS]  # the report: every run side by side
    write_config(demo, cfg)
    snakemake(demo, "--cores", "2", timeout=2400)  # the default targets (done) and the report's figures
    metrics = (demo / "results/report/metrics.html").read_text()
    for run in ("demo", "llava_demo", *DEMO_RUNS):
        assert run in metrics, run
    for run in DEMO_RUNS:
        assert (demo / f"results/{run}/report/llava_training.svg").stat().st_size > 0, run
    for run in DEMO_RUNS:
        for stage in ("pretrain", "finetune"):
            losses = train_losses(demo / f"results/{run}/llava/{stage}/train_log.jsonl")
            assert losses and all(math.isfinite(x) for x in losses), (run, stage)
            assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (run, stage, losses)

    t5 = json.loads((demo / "results/clip_flant5_demo/llava_eval.json").read_text())
    assert t5["llava"]["llm"] == "tiny_t5" and t5["llava"]["template"] == "t5_v1"
    wino = t5["tasks"]["demo_vqascore_winoground"]
    assert set(wino["metrics"]) == {"text", "image", "group"} and wino["chance"]["group"] == pytest.approx(1 / 6)
    assert all(0.0 <= v <= 1.0 for v in wino["metrics"].values()) and wino["counts"]["examples"] == 100
    manifest = json.loads((demo / "results/clip_flant5_demo/llava/finetune/config.json").read_text())
    assert manifest["encoder_decoder"] is True
    assert not (demo / "results/clip_flant5_demo/llava/hf").exists()

    quilt = json.loads((demo / "results/quilt_demo/llava/finetune/config.json").read_text())
    assert quilt["tower"]["kind"] == "clip" and quilt["tower"]["n_tokens"] == (64 // 8) ** 2  # tiny CLIP: 64 px / 8
    assert "demo_pope/f1" in json.loads((demo / "results/quilt_demo/llava_eval.json").read_text())["metrics"]

    lines = [json.loads(x) for x in (demo / "results/remgcl_demo/llava/finetune/train_log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "global_loss" in x]
    assert all(math.isfinite(x["global_loss"]) and math.isfinite(x["local_loss"]) for x in steps)
    with_image = [x for x in steps if x["global_samples"] > 0]  # modality grouping: some batches are all text-only
    assert len(with_image) > len(steps) // 2 and all(x["local_regions"] == x["global_samples"] for x in with_image)
    assert all(x["global_loss"] != 0 and x["local_loss"] != 0 for x in with_image)
    assert all(x["global_loss"] == x["local_loss"] == 0 for x in steps if x["global_samples"] == 0)  # 0, not NaN
    for x in steps:  # loss = lm + 0.1 global + 0.1 local, as logged
        assert x["loss"] == pytest.approx(x["lm_loss"] + 0.1 * x["global_loss"] + 0.1 * x["local_loss"], rel=1e-4, abs=1e-5)
