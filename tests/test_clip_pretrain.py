"""CLIP from scratch (miniVLM's first stage): the gathered loss, learning, resuming, saving and loading.

Every model here is tiny (ViT width 64, 2 blocks, patch 16 on 64 px; text width 64, 2 blocks, context
32) and every test runs torch on one thread: the machines that run the suite share their cores.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file

from sailflow import clip_pretrain as cp
from sailflow.data.filter import iter_tar_images
from sailflow.demo.evalsets import class_folders
from sailflow.demo.shapes import COLOURS, SHAPES, draw_shape, make_split

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # miniVLM's normalisation


def settings(**over) -> dict:
    s = dict(model=TINY, preprocess=IMAGENET, caption_source="raw_caption", batch_size=16, steps=12, epochs=None,
             lr=2e-3, min_lr=2e-4, warmup=0.1, betas=[0.9, 0.98], eps=1e-6, weight_decay=0.1, grad_clip=1.0,
             precision="fp32", seed=0, log_every=2, checkpoint_every=4, workers=0)
    return {**s, **over}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shapes_chunk(root: Path, n: int, seed: int, side: int = 64) -> Path:
    """A downloaded dataset's chunk as the data stages leave it: ``root/samples.parquet`` (sample_id,
    key, shard, offset, size, width, height, url, the DreamLIP caption columns) and the webdataset tar
    ``root/images/00000.tar``; the demo's shapes with their captions (2% empty raw captions)."""
    csv = make_split(root / "src", "train", n, seed, side=side)
    table = pd.read_csv(csv, keep_default_na=False)
    images = root / "images"
    images.mkdir(parents=True)
    captions = {}
    with tarfile.open(images / "00000.tar", "w") as tf:
        for i, row in table.iterrows():
            key = f"{i:09d}"
            for name, data in ((f"{key}.png", (root / "src" / "images" / "train" / f"{i:06d}.png").read_bytes()),
                               (f"{key}.txt", row["raw_caption"].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            captions[key] = {"sample_id": i, "key": key, "url": row["Image Path"], **row.drop("Image Path").to_dict()}
    rows = [{**captions[key], "shard": "00000.tar", "offset": offset, "size": size, "width": side, "height": side}
            for key, offset, size, _ in iter_tar_images(images / "00000.tar")]
    pd.DataFrame(rows).to_parquet(root / "samples.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return shapes_chunk(tmp_path_factory.mktemp("shapes") / "chunks" / "0000", 1024, seed=0)


def train_args(chunk: Path, out: Path, s: dict) -> dict:
    return dict(samples=[str(chunk / "samples.parquet")], images_dirs=[str(chunk / "images")], out_dir=str(out), settings=s,
                meta={"dataset": "shapes"})


# ---- (1) the loss over processes --------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init: str, out_dir: str, images: torch.Tensor, tokens: torch.Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = cp.build_model(TINY)[0].double()
    net = torch.nn.parallel.DistributedDataParallel(model)  # averages the gradients, as the trainer
    n = images.shape[0] // world
    part = slice(rank * n, (rank + 1) * n)
    loss = cp.batch_loss(net, cp.make_loss(rank, world), images[part], tokens[part])
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": {k: p.grad for k, p in model.named_parameters()}}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_with_gathered_negatives_equal_one_big_batch(tmp_path):
    # float64 (model, data, loss): the two processes sum in another order than one, which in float64
    # leaves ~1e-16, so the default float64 tolerances are exact for this purpose; local negatives
    # only, or a missing gradient through the gather, would be off at first order.
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 64, 64, generator=g, dtype=torch.float64)
    tokens = cp.build_model(TINY)[2]([f"a {c} {s}" for c, s in zip(list(COLOURS), SHAPES + SHAPES)])
    torch.multiprocessing.spawn(_ddp_worker, args=(2, f"file://{tmp_path}/init", str(tmp_path), images, tokens), nprocs=2, join=True)

    torch.manual_seed(0)
    model = cp.build_model(TINY)[0].double()
    loss = cp.batch_loss(model, cp.make_loss(), images, tokens)
    loss.backward()
    expected = {k: p.grad for k, p in model.named_parameters()}
    assert loss.dtype == torch.float64 and all(v is not None for v in expected.values())
    # a local loss (4 of the 8 pairs) is another number: the comparison below can tell
    local = cp.batch_loss(model, cp.make_loss(), images[:4], tokens[:4]).item()
    assert abs(local - loss.item()) > 1e-3
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach())
        assert got["grads"].keys() == expected.keys()
        for k, v in expected.items():
            torch.testing.assert_close(got["grads"][k], v, msg=lambda m, k=k: f"rank {rank} {k}: {m}")


# ---- (2) learning ---------------------------------------------------------------------------------
def test_tiny_clip_learns_colours_zero_shot(shapes, tmp_path):
    """Trained on the raw captions ("red circle", "circle clipart red", ...) for 200 steps of 32, the
    CLIP names the colour of held-out shapes zero-shot through the evaluation stage's own code
    (zeroshot task over class folders; the backbones loaded from the saved folder). Measured: acc1
    0.72-0.77 for seeds 0-3 (8 colours, chance 0.125), 10-14 s of training on one shared thread."""
    from sailflow.evaluate import tasks

    out = tmp_path / "clip"
    s = settings(batch_size=32, steps=200, log_every=50, checkpoint_every=100)
    manifest = cp.train(train_args(shapes, out, s), log=io.StringIO())

    table = pd.read_parquet(shapes / "samples.parquet")
    empty = int((table["raw_caption"].str.strip() == "").sum())
    assert empty > 0 and manifest["dropped"] == {"empty_caption": empty} and manifest["samples"] == len(table) - empty
    assert manifest["steps"] == 200 and [r["step"] for r in manifest["losses"]] == [50, 100, 150, 200]
    assert manifest["losses"][-1]["loss"] < 0.7 * manifest["losses"][0]["loss"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "open_clip_config.json", "open_clip_model.safetensors",
                                                     "train_log.jsonl"]  # the state is gone once finished

    held = tmp_path / "held"
    make_split(held, "heldout", 240, seed=99, side=64)  # another seed: shapes never seen in training
    class_folders(pd.read_parquet(held / "heldout.meta.parquet"), held / "images" / "heldout", held / "colour", "colour")
    spec = {"kind": "zeroshot", "folder": str(held / "colour"),
            "templates": [f"{{c}} {s}" for s in SHAPES] + [f"{{c}} {s} icon - stock vector" for s in SHAPES]}
    result = tasks.run(cp.ClipModel(out), spec, name="colour")
    assert result["counts"]["classes"] == 8 and result["chance"]["acc1"] == 0.125
    assert result["metrics"]["acc1"] > 0.4, result["metrics"]


# ---- (3) resuming -------------------------------------------------------------------------------
def _interrupted(args: dict, monkeypatch, at: int = 8) -> None:
    """Run ``args`` until the checkpoint at step ``at`` is written, then die (as a killed job)."""
    real = cp.save_state

    def crash(state_dir, model, opt, step, *a, **k):
        real(state_dir, model, opt, step, *a, **k)
        if step == at:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(cp, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        cp.train(args, log=io.StringIO())
    monkeypatch.undo()
    out = Path(args["out_dir"])
    assert (out / "state" / cp.STATE_FILE).exists() and not (out / cp.MANIFEST_FILE).exists()


def _log(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "samples_per_s"} for x in (out / cp.LOG_FILE).read_text().splitlines()]


def _run_script(chunk: Path, out: Path, s: dict, monkeypatch, threads: int = 2) -> str:
    """The Snakemake script's main() with a stand-in for the `snakemake` object; returns its log."""
    spec = importlib.util.spec_from_file_location("clip_pretrain_script", REPO / "workflow" / "scripts" / "clip_pretrain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # log_to() redirects both: undone after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    runtime = {k: s[k] for k in cp.RUNTIME_KEYS}
    out.parent.mkdir(parents=True, exist_ok=True)  # Snakemake makes the log's folder
    smk = SimpleNamespace(
        input=SimpleNamespace(samples=[str(chunk / "samples.parquet")]),
        output=SimpleNamespace(manifest=str(out / cp.MANIFEST_FILE)),
        log=[str(out.parent / "clip.log")], threads=threads, wildcards=SimpleNamespace(run="demo"),
        resources=SimpleNamespace(gpu=0, log_every=runtime["log_every"], checkpoint_every=runtime["checkpoint_every"]),
        params=SimpleNamespace(settings={k: v for k, v in s.items() if k not in cp.RUNTIME_KEYS}, meta={"dataset": "shapes"}),
    )
    script.main(smk)
    sys.stdout.flush()
    return (out.parent / "clip.log").read_text()


def test_resume_equals_an_uninterrupted_run_and_changes_start_fresh(shapes, tmp_path, monkeypatch):
    chunk = tmp_path / "chunks" / "0000"
    shutil.copytree(shapes, chunk, ignore=shutil.ignore_patterns("src"))
    s = settings()
    ref = tmp_path / "ref" / "clip"  # uninterrupted, through the workflow script (one loader process)
    text = _run_script(chunk, ref, s, monkeypatch)
    assert "devices: cpu" in text and '"step": 12' in text
    ref_manifest = cp.read_manifest(ref)
    assert ref_manifest["run"] == "demo" and ref_manifest["settings"]["workers"] == 1

    out = tmp_path / "run" / "clip"
    args = train_args(chunk, out, s)  # in-process, no loader processes (a runtime setting: still the same run)
    _interrupted(args, monkeypatch)
    log = io.StringIO()
    manifest = cp.train(args, log=log)
    assert "resumed from step 8" in log.getvalue()
    assert _log(out) == _log(ref) and [r["step"] for r in _log(out)] == [2, 4, 6, 8, 10, 12]
    assert manifest["losses"] == ref_manifest["losses"] and manifest["fingerprint"] == ref_manifest["fingerprint"]
    a, b = load_file(str(ref / cp.WEIGHTS_FILE)), load_file(str(out / cp.WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "state").exists()

    # a finished run is never resumed: a rerun trains from scratch (and ends the same)
    log = io.StringIO()
    cp.train(args, log=log)
    assert "resumed" not in log.getvalue() and _log(out) == _log(ref)

    # another setting: the unfinished state of the old one is wiped, and the log says why
    _interrupted(args, monkeypatch)
    log = io.StringIO()
    changed = cp.train(train_args(chunk, out, settings(lr=1e-3)), log=log)
    assert "starting fresh" in log.getvalue() and "settings changed" in log.getvalue() and "resumed" not in log.getvalue()
    assert changed["fingerprint"] != ref_manifest["fingerprint"] and [r["step"] for r in _log(out)] == [2, 4, 6, 8, 10, 12]
    assert changed["losses"] != ref_manifest["losses"]

    # rewritten inputs (a row fewer): the same
    _interrupted(train_args(chunk, out, settings(lr=1e-3)), monkeypatch)
    table = pd.read_parquet(chunk / "samples.parquet")
    table.iloc[:-1].to_parquet(chunk / "samples.parquet", index=False)
    log = io.StringIO()
    cp.train(train_args(chunk, out, settings(lr=1e-3)), log=log)
    assert "starting fresh" in log.getvalue() and "samples inputs changed" in log.getvalue() and "resumed" not in log.getvalue()


# ---- (4) saving and loading ---------------------------------------------------------------------
def test_saved_clip_loads_back_as_open_clip_backbones_and_llava_tower(tmp_path):
    import random

    from sailflow.llava.towers import load_tower

    torch.manual_seed(0)
    model, preprocess, tokenizer = cp.build_model(TINY, IMAGENET)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # not the initial value: the weights really come from the file
    folder = tmp_path / "clip"
    cp.save_model(folder, model, TINY, IMAGENET)
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert json.loads((folder / "open_clip_config.json").read_text()) == {"model_cfg": TINY, "preprocess_cfg": IMAGENET}

    loaded, preprocess2, tokenizer2 = cp.load_model(folder)
    model.eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert float(loaded.logit_scale.detach()) == 2.5
    image = draw_shape("star", "red", "blue", "large", "center", 64, random.Random(0))
    x = preprocess(image)[None]
    assert torch.equal(preprocess2(image)[None], x) and x.shape == (1, 3, 64, 64)
    assert type(tokenizer2).__name__ == "SimpleTokenizer" and tokenizer2.context_length == 32
    texts = ["red star", "blue circle clipart"]
    t = tokenizer(texts)
    assert torch.equal(tokenizer2(texts), t) and t.shape == (2, 32)
    with torch.no_grad():
        want_image, want_text = F.normalize(model.encode_image(x), dim=-1), F.normalize(model.encode_text(t), dim=-1)
        torch.testing.assert_close(F.normalize(loaded.encode_image(x), dim=-1), want_image)

    # the evaluation stage's backbones (family open_clip, path local-dir:<folder>)
    clip = cp.ClipModel(folder)
    torch.testing.assert_close(clip.encode_image([image]), want_image)
    torch.testing.assert_close(clip.encode_text(texts), want_text)
    assert cp.backbone_spec(folder, "text")["path"] == f"local-dir:{folder}"

    # a LLaVA open_clip tower: the patch tokens of the last block, CLS dropped (4 x 4 patches of 16 px)
    tower = load_tower({"kind": "open_clip", "name": "clip", "backbone": cp.backbone_spec(folder), "layer": -1})
    assert (tower.n_tokens, tower.hidden_size, tower.image_size) == (16, 64, (64, 64))
    with torch.no_grad():
        tokens = tower(x)
        blocks = model.visual.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC")
    torch.testing.assert_close(tokens, blocks["image_intermediates"][0])


def test_bad_settings_and_inputs_are_errors_that_say_what_to_do(shapes, tmp_path):
    with pytest.raises(cp.ClipPretrainError, match="missing \\['embed_dim'\\]"):
        cp.check_model_config({"vision_cfg": {}, "text_cfg": {}})
    with pytest.raises(cp.ClipPretrainError, match="caption sources of this dataset are"):
        cp.CaptionedImages([shapes / "samples.parquet"], [shapes / "images"], "no_such_caption")
    with pytest.raises(cp.ClipPretrainError, match="fewer than one batch"):
        cp.train(train_args(shapes, tmp_path / "o", settings(batch_size=4096)), log=io.StringIO())
    with pytest.raises(cp.ClipPretrainError, match="not divisible"):
        cp.BatchPlan(100, 10, 0, rank=0, world=3)
