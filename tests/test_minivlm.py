"""miniVLM in the workflow: a CLIP trained from scratch (clip_runs:), scored zero-shot (clip_eval), whose ViT
is the trainable tower of a LLaVA run (resampler connector, chat template); the tiny demo variant end to end,
and the real run's plan."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import job_inputs, placeholders, planned_jobs, repo_config, snakemake, train_losses, write_config


# ---- the plans --------------------------------------------------------------------------------------
def test_minivlm_plans_from_urls_to_its_benchmarks(workdir):
    """results/minivlm/llava_eval.json plans (no network, the datasets' tables not fetched yet) with its LLaVA
    data and benchmark files present: the CLIP trains on the three datasets' chunks first, and both LLaVA stages
    wait for it (their tower is its ViT). The default target stays the demo, without the CLIP."""
    cfg = repo_config()
    write_config(workdir, cfg)
    placeholders(workdir, cfg, "minivlm")
    proc = snakemake(workdir, "-n", "results/minivlm/llava_eval.json", "--cores", "32", "--resources", "gpu=8")
    jobs = planned_jobs(proc.stdout)
    datasets = cfg["clip_runs"]["minivlm"]["datasets"]
    chunks = sum(cfg["datasets"][d]["n_chunks"] for d in datasets)
    tasks = cfg["llava_runs"]["minivlm"]["eval"]
    assert jobs["fetch_source"] == len(datasets) and jobs["download_chunk"] == chunks and jobs["cleanup_" + datasets[0]] == 1
    assert jobs["clip_pretrain"] == 1 and jobs["llava_pretrain"] == 1 and jobs["llava_finetune"] == 1
    assert jobs["llava_answers"] == jobs["llava_score"] == len(tasks) and jobs["llava_eval_summary"] == 1
    assert "llava_export" not in jobs and "clip_eval" not in jobs  # a resampler has no transformers Llava export
    clip_in = job_inputs(proc.stdout, "clip_pretrain")
    assert len(clip_in) == chunks and all(p.endswith("/samples.parquet") for p in clip_in)
    for stage in ("llava_pretrain", "llava_finetune"):
        assert "results/minivlm/clip/manifest.json" in job_inputs(proc.stdout, stage), stage

    # a SAIL-style job loading the CLIP as a backbone waits for it too (backbone_model_input)
    proc = snakemake(workdir, "-n", "results/eval/demo_colour/image/clip_demo_vit.safetensors")
    assert planned_jobs(proc.stdout)["clip_pretrain"] == 1
    assert "results/clip_demo/clip/manifest.json" in job_inputs(proc.stdout, "eval_image_features")

    jobs = planned_jobs(snakemake(workdir, "-n").stdout)  # the default demo: no CLIP from scratch in it
    assert "clip_pretrain" not in jobs and "clip_eval" not in jobs and jobs["llava_pretrain"] == 1


def test_a_clip_backbone_without_its_run_is_a_config_error(workdir):
    cfg = repo_config()
    cfg["backbones"]["orphan"] = {"kind": "vision", "family": "open_clip", "path": "local-dir:results/nowhere/clip"}
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0 and "backbones.orphan.path" in proc.stdout + proc.stderr and "clip_runs" in proc.stdout + proc.stderr
    cfg = repo_config()
    cfg["clip_runs"]["clip_demo"]["eval"] = ["demo_colour", "demo_vqa"]  # a LLaVA benchmark, not an eval_tasks entry
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0 and "clip_runs.clip_demo.eval: unknown task 'demo_vqa'" in proc.stdout + proc.stderr


# ---- the tower ---------------------------------------------------------------------------------------
def test_an_unlocked_open_clip_tower_trains_only_what_its_tokens_use(tmp_path):
    """A CLIP's ViT as a trainable tower: the text half, the logit scale and the pooled output's norm and
    projection stay frozen (no gradient would reach them: DDP counts that as an error); every block does train."""
    from sailflow import clip_pretrain as cp
    from sailflow.llava.towers import load_tower

    cfg = repo_config()["clip_runs"]["clip_demo"]
    torch.manual_seed(0)
    model = cp.build_model(cfg["model"])[0]
    cp.save_model(tmp_path / "clip", model, cfg["model"])
    tower = load_tower({"kind": "open_clip", "name": "clip", "backbone": cp.backbone_spec(tmp_path / "clip"), "layer": -1})
    assert (tower.n_tokens, tower.hidden_size) == (16, 64)  # 4 x 4 patches, CLS dropped
    tower.set_trainable(tower=True)
    trainable = {n for n, p in tower.backbone.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("visual.") for n in trainable)
    assert not {"visual.proj", "visual.ln_post.weight", "logit_scale"} & trainable
    assert {f"visual.transformer.resblocks.{i}.mlp.c_proj.weight" for i in (0, 1)} <= trainable
    tower.train()
    tower(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in tower.backbone.model.parameters() if p.requires_grad)


# ---- the demo variant end to end --------------------------------------------------------------------
@pytest.mark.e2e
def test_minivlm_demo_trains_from_urls_to_a_chat_model(demo_copy):
    """On the demo's shapes (its download and held-out sets): clip_demo trained from scratch on their raw
    alt-texts and scored zero-shot on the held-out colour and shape sets (both above chance), then
    minivlm_demo's two stages on its ViT with the tower trained in both: finite, decreasing losses, the tower
    of each stage saved and carried into the next."""
    from sailflow.llava.generate import VisionLanguageModel

    workdir, cfg = demo_copy
    run = cfg["llava_runs"]["minivlm_demo"]
    run["pretrain"]["epochs"] = 0.25  # ~23 steps of 32
    run["finetune"]["epochs"] = 0.25  # ~24 steps of 32 (3,123 records)
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2", "results/clip_demo/clip_eval.json", "results/minivlm_demo/llava/finetune/config.json", timeout=1800)

    # the CLIP: trained as configured, scored with each metric's chance level
    clip = json.loads((workdir / "results/clip_demo/clip/manifest.json").read_text())
    assert clip["steps"] == cfg["clip_runs"]["clip_demo"]["steps"] and clip["run"] == "clip_demo"
    assert clip["losses"][-1]["loss"] < 0.6 * clip["losses"][0]["loss"]
    scores = json.loads((workdir / "results/clip_demo/clip_eval.json").read_text())
    assert set(scores["tasks"]) == {"demo_colour", "demo_shape"} and scores["fingerprint"] == clip["fingerprint"]
    for task, classes in (("demo_colour", 8), ("demo_shape", 6)):
        t = scores["tasks"][task]
        assert t["counts"]["images"] == len(list((workdir / "results/demo/evalsets" / task.removeprefix("demo_")).rglob("*.png")))
        assert t["chance"]["acc1"] == pytest.approx(1 / classes)
    # measured 0.87 (chance 0.125) and 0.26 (chance 0.167, 500 images: 0.017 is one standard deviation of chance)
    assert scores["metrics"]["demo_colour/acc1"] > 3 * scores["chance"]["demo_colour/acc1"], scores["metrics"]
    assert scores["metrics"]["demo_shape/acc1"] > scores["chance"]["demo_shape/acc1"] + 0.05, scores["metrics"]

    # the two stages: finite losses that fall; the ViT trained in both, the text half of the CLIP untouched
    base = load_file(str(workdir / "results/clip_demo/clip/open_clip_model.safetensors"))
    towers = {}
    for stage in ("pretrain", "finetune"):
        d = workdir / "results/minivlm_demo/llava" / stage
        manifest = json.loads((d / "config.json").read_text())
        losses = train_losses(d / "train_log.jsonl")
        assert len(losses) >= 10 and all(math.isfinite(x) for x in losses), losses
        assert sum(losses[-3:]) < sum(losses[:3]), (stage, losses)
        assert manifest["tower"]["trainable"]["tower"] and manifest["template"] == "chat" and manifest["n_image_tokens"] == 16
        assert "tower.safetensors" in manifest["trained"]
        towers[stage] = load_file(str(d / "tower.safetensors"))
    assert json.loads((workdir / "results/minivlm_demo/llava/finetune/config.json").read_text())["tower_from_previous"] == ["tower.safetensors"]
    key = "model.visual.transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.equal(towers["pretrain"][key], base[key.removeprefix("model.")])
    assert not torch.equal(towers["finetune"][key], towers["pretrain"][key])
    text = "model.transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(towers["finetune"][text], base[text.removeprefix("model.")])

    # loads from its manifest from any working directory (the tower's local-dir path too) and answers
    vlm = VisionLanguageModel.from_run(workdir / "results/minivlm_demo", device="cpu")
    assert torch.equal(vlm.model.vision_tower.backbone.state_dict()[key], towers["finetune"][key])
    image = sorted((workdir / "results/demo/evalsets/colour").rglob("*.png"))[0]
    assert isinstance(vlm.generate([str(image)], ["What colour is the shape?"], max_new_tokens=4)[0], str)
