"""The config schema: unknown keys anywhere are errors with their key path, before any job runs;
per-family pooling defaults live in the schema alone; backbones can be pinned to a hub revision."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from snakemake.utils import validate

from conftest import REPO, repo_config, snakemake, write_config
from sailflow.backbones import BackboneError, load_vision
from sailflow.config import ConfigError, check_config, config_errors

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _errors(cfg: dict) -> list[str]:
    import yaml

    return config_errors(cfg, yaml.safe_load(SCHEMA.read_text()))


def test_repo_config_is_valid():
    assert _errors(repo_config()) == []


@pytest.mark.parametrize("where,key,expected", [
    ((), "dowload", "(top level): unknown key 'dowload'; did you mean 'download'?"),
    (("align",), "learning_rate", "align: unknown key 'learning_rate'"),
    (("runs", "demo", "align"), "learning_rate", "runs.demo.align: unknown key 'learning_rate'"),
    (("runs", "sail_l_nv2"), "aling", "runs.sail_l_nv2: unknown key 'aling'; did you mean 'align'?"),
    (("probe", "align"), "epoch", "probe.align: unknown key 'epoch'; did you mean 'epochs'?"),
    (("datasets", "shapes", "probe_align"), "lr_", "datasets.shapes.probe_align: unknown key 'lr_'; did you mean 'lr'?"),
    (("probe",), "caption", "probe: unknown key 'caption'"),
    (("demo",), "n_trian", "demo: unknown key 'n_trian'; did you mean 'n_train'?"),
    (("backbones", "minilm"), "maxlength", "backbones.minilm: unknown key 'maxlength'; did you mean 'max_length'?"),
])
def test_unknown_keys_are_errors_with_their_path(where, key, expected):
    cfg = repo_config()
    node = cfg
    for part in where:
        node = node.setdefault(part, {})
    node[key] = 1
    errors = _errors(cfg)
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_a_bad_value_in_an_override_is_caught_by_the_shared_definition():
    cfg = repo_config()
    cfg["runs"]["sail_l_nv2"]["align"] = {"head": "starr"}
    cfg["probe"]["align"]["optimizer"] = "sgd"
    assert _errors(cfg) == ["probe.align.optimizer: 'sgd' is not one of ['lion', 'adamw']",
                            "runs.sail_l_nv2.align.head: 'starr' is not one of ['star', 'mlp', 'linear']"]
    with pytest.raises(ConfigError, match="runs.sail_l_nv2.align.head"):
        check_config(cfg, SCHEMA)


def test_workflow_stops_on_a_typo_before_any_job(workdir):
    cfg = repo_config()
    cfg["runs"]["demo"]["align"]["epoch"] = 3
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "runs.demo.align: unknown key 'epoch'; did you mean 'epochs'?" in out
    assert "Job stats" not in out and "$schema" not in out  # stopped at start, without dumping the schema


def test_a_llava_batch_the_gpus_cannot_split_stops_the_plan(workdir):
    """global_batch_size = per-device x GPUs x accumulation: a run that breaks it fails when planned, naming the
    run and stage, not after its job has waited for 8 GPUs."""
    cfg = repo_config()
    cfg["llava_runs"]["llava15_7b"]["pretrain"]["per_device_batch_size"] = 64  # 64 x 8 GPUs does not divide 256
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert ("llava_runs.llava15_7b.pretrain: global_batch_size 256 is not a multiple of per_device_batch_size 64 x 8 GPUs"
            in out), out[-2000:]


def test_a_system_prompt_for_a_template_without_one_stops_the_plan(workdir):
    cfg = repo_config()
    cfg["llava_runs"]["llava_demo"]["pretrain"]["system_prompt"] = ""  # stage 1's `plain` has none
    write_config(workdir, cfg)
    proc = snakemake(workdir, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "llava_runs.llava_demo.pretrain.system_prompt: template 'plain' has no system prompt to set" in out, out[-2000:]


def _filled(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA))
    return cfg


def test_pooling_default_and_choices_per_family():
    cfg = repo_config()
    for name in ("tiny_dinov2", "dinov2_l", "minilm", "clip_l", "quiltnet_b32", "nv2"):
        cfg["backbones"][name].pop("pooling", None)
    b = _filled(cfg)["backbones"]
    assert (b["tiny_dinov2"]["pooling"], b["dinov2_l"]["pooling"], b["minilm"]["pooling"]) == ("concat", "concat", "mean")
    assert (b["clip_l"]["pooling"], b["quiltnet_b32"]["pooling"], b["nv2"]["pooling"]) == ("pooler", "projected", "latent")
    assert b["clip_l"]["layer"] == -2 and "layer" not in b["dinov2_l"]  # token features: LLaVA's penultimate block
    cfg["backbones"]["clip_l"]["pooling"] = "concat"  # a pooling of another family was accepted, ignored and recorded
    cfg["backbones"]["minilm"]["pooling"] = "concat"
    cfg["backbones"]["nv2"]["pooling"] = "mean"
    assert _errors(cfg) == ["backbones.clip_l.pooling: 'concat' is not one of ['pooler', 'tokens']",
                            "backbones.minilm.pooling: 'concat' is not one of ['mean', 'cls', 'last']",
                            "backbones.nv2.pooling: 'mean' is not one of ['latent']"]


def test_dinov2_without_pooling_encodes_and_records_concat(tmp_path):
    from sailflow.backbones.tiny import build_tiny

    path = build_tiny("dinov2", tmp_path / "tiny")
    cfg = repo_config()
    cfg["backbones"]["tiny_dinov2"] = {"kind": "vision", "family": "dinov2", "path": str(path)}  # no pooling
    spec = _filled(cfg)["backbones"]["tiny_dinov2"]
    bb = load_vision("tiny_dinov2", spec)
    assert bb.pooling == "concat"  # what the embedding files record
    assert bb(torch.zeros(1, 3, 64, 64)).shape == (1, 2 * 64)  # and what they hold: [CLS; mean patch]
    with pytest.raises(BackboneError, match="no pooling given"):  # outside the workflow: say it, never guess
        load_vision("v", {"kind": "vision", "family": "dinov2", "path": str(path)})
    with pytest.raises(BackboneError, match="not available for a vision clip backbone"):
        load_vision("v", {"kind": "vision", "family": "clip", "path": str(path), "pooling": "mean"})


def _fake_hub_cache(root, seeds: dict) -> None:
    """A Hugging Face hub cache holding one tiny DINOv2 repo at several commits (``{commit: seed}``),
    laid out as huggingface_hub writes it; ``main`` points at the last one."""
    from sailflow.backbones.tiny import build_tiny

    repo = root / "models--sailflow-test--tiny-dinov2"
    for commit, seed in seeds.items():
        build_tiny("dinov2", repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(list(seeds)[-1])


def test_revision_pins_the_hub_snapshot(tmp_path):
    """``revision:`` reaches from_pretrained: with the hub offline, each pinned commit loads its own weights."""
    a, b = "a" * 40, "b" * 40
    _fake_hub_cache(tmp_path / "hub", {a: 0, b: 1})
    script = textwrap.dedent(f"""
        import torch
        from sailflow.backbones import load_vision
        x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
        spec = {{"kind": "vision", "family": "dinov2", "path": "sailflow-test/tiny-dinov2", "pooling": "cls"}}
        out = {{r: load_vision("v", {{**spec, "revision": r}} if r else spec)(x) for r in ({a!r}, {b!r}, None)}}
        print(int(torch.equal(out[{a!r}], out[{b!r}])), int(torch.equal(out[None], out[{b!r}])))
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["0", "1"]  # the two commits differ; no revision = main = the last commit


def test_evaluation_tasks_are_checked_by_their_kind():
    from sailflow.evaluate.kinds import TaskError, check_task

    check_task({"kind": "retrieval", "annotations": "a.json", "images": "img"}, "coco")
    with pytest.raises(TaskError, match=r"eval_tasks.coco: unknown key\(s\) \['image'\] for a retrieval task"):
        check_task({"kind": "retrieval", "annotations": "a.json", "image": "img"}, "coco")
    with pytest.raises(TaskError, match="eval_tasks.inet: a zeroshot task needs `folder` or `csv`"):
        check_task({"kind": "zeroshot", "templates": ["a {c}."]}, "inet")
    with pytest.raises(TaskError, match=r"eval_tasks.x.kind must be one of \['mmvp', 'retrieval', 'winoground', 'zeroshot'\]"):
        check_task({"kind": "vqa2"}, "x")
