"""REMGCL wired into LLaVA stage 2: the demo shapes' OCR regions, regions on the tower's padded patch grid,
a stage 2 with `remgcl` trained end to end and its log, lambda = 0 against a plain stage 2 (exactly),
gradient accumulation and two processes against one big batch, and bad OCR data and settings."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from llava_parts import plain_sgd_step, stage_args
from sailflow.demo.ocr import add_ocr, shape_box, shape_regions
from sailflow.demo.shapes import COLOURS, make_split
from sailflow.llava.data import RecordError
from sailflow.llava.remgcl import RemgclSettings, box_to_tokens, pad_box
from sailflow.llava.templates import IGNORE_INDEX

pytestmark = pytest.mark.e2e

QUESTION = "<image>\nWhat shape is shown in the image?"
DEVNULL = open(os.devnull, "w")


def _record(rid: str, image: str, answer: str, ocr=None) -> dict:
    rec = {"id": rid, "image": image, "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer}]}
    if ocr is not None:
        rec["ocr"] = ocr
    return rec


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Eight demo shapes at the tiny tower's input size (32 px: a 4 x 4 grid of 8 px patches), one of them
    also pasted on a wide 48 x 32 canvas (padded to a square by the tower), and their OCR regions."""
    root = tmp_path_factory.mktemp("remgcl_shapes")
    make_split(root, "train", n=8, seed=3, side=32)
    meta = pd.read_parquet(root / "train.meta.parquet")
    first = meta.iloc[0]
    wide = Image.new("RGB", (48, 32), COLOURS[first["background"]])
    wide.paste(Image.open(root / "images" / "train" / "000000.png"), (16, 0))
    wide.save(root / "images" / "train" / "wide.png")
    meta = pd.concat([meta, pd.DataFrame([{**first.to_dict(), "row": 100,
                                           "url": (root / "images" / "train" / "wide.png").resolve().as_uri()}])],
                     ignore_index=True)
    records = [_record(f"s{r.row}", f"images/train/{r.row:06d}.png", r.shape) for r in meta.iloc[:8].itertuples()]
    records.append(_record("wide", "images/train/wide.png", first["shape"]))
    records.append({"id": "t0", "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "red"}]})
    return {"root": root, "meta": meta, "records": add_ocr(records, meta, root)}


def _write(tmp: Path, records: list[dict], name: str = "records.json") -> str:
    path = tmp / name
    path.write_text(json.dumps(records))
    return str(path)


def _args(parts, stage1, out: Path, data: str, images, **settings) -> dict:
    args = stage_args(parts, "finetune", out, **settings)
    args["previous"] = str(stage1)
    args["data"] = [{"json": data, "images": str(images)}]
    return args


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# ---- the demo's OCR regions -------------------------------------------------------------------------------


def test_shape_box_is_the_bounding_box_of_the_shape_pixels():
    img = Image.new("RGB", (20, 10), COLOURS["blue"])
    ImageDraw.Draw(img).rectangle([3, 2, 7, 5], fill=COLOURS["red"])  # PIL: both corners inclusive
    assert shape_box(img, COLOURS["blue"]) == [3, 2, 8, 6]
    assert shape_box(Image.new("RGB", (5, 5), COLOURS["blue"]), COLOURS["blue"]) is None


def test_demo_records_get_their_shape_name_at_its_box(shapes):
    meta, records, root = shapes["meta"], shapes["records"], shapes["root"]
    by_id = {r["id"]: r for r in records}
    for row in meta.iloc[:8].itertuples():
        (region,) = by_id[f"s{row.row}"]["ocr"]
        assert region["text"] == row.shape
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        px = Image.open(root / "images" / "train" / f"{row.row:06d}.png").load()
        bg = COLOURS[row.background]
        inside = [px[x, y] != bg for x in range(x0, x1) for y in range(y0, y1)]
        outside = [px[x, y] != bg for x in range(32) for y in range(32) if not (x0 <= x < x1 and y0 <= y < y1)]
        assert any(inside) and not any(outside)
        assert [px[x0, y] != bg for y in range(y0, y1)].count(True) > 0  # every edge touches the shape
        assert [px[x1 - 1, y] != bg for y in range(y0, y1)].count(True) > 0
    wide, first = by_id["wide"]["ocr"][0]["box"], by_id["s0"]["ocr"][0]["box"]
    assert wide == [first[0] + 16, first[1], first[2] + 16, first[3]]  # pasted 16 px to the right
    assert "ocr" not in by_id["t0"]  # text-only: untouched
    assert len(shape_regions(meta)) == 9


# ---- regions in the batch ---------------------------------------------------------------------------------


def _model(parts, stage1, **settings):
    from sailflow.llava.train import build_model, set_trainable

    args = stage_args(parts, "finetune", Path("unused"), **settings)
    torch.manual_seed(0)
    model, tok, tower = build_model(args, connector_state=load_file(str(Path(stage1) / "connector.safetensors")))
    set_trainable(model, "finetune", args["settings"])
    return model, tok, tower


def _dataset(model, tok, tower, records, images: Path, tmp: Path, regions):
    from sailflow.llava.data import LlavaDataset, read_records
    from sailflow.llava.templates import get_template

    recs, _ = read_records(_write(tmp, records, "dataset.json"), images)
    return LlavaDataset(recs, get_template("v1", tok), tower.preprocess, model.n_image_tokens, 256, tower.image_size,
                        regions=regions, log=DEVNULL)


def test_regions_reach_the_batch_on_the_padded_patch_grid(parts, stage1, shapes):
    from sailflow.llava.data import LlavaDataset, collate, read_records
    from sailflow.llava.templates import get_template
    from sailflow.llava.train import setup_remgcl

    model, tok, tower = _model(parts, stage1)
    settings, mapper = setup_remgcl({}, model, tower, tok, "pad")
    assert tower.patch_size == (8, 8) and mapper.grid == (4, 4) and model.n_image_tokens == 16
    assert settings == RemgclSettings()
    root = shapes["root"]
    records = [_record("w1", "images/train/wide.png", "stop", [{"text": "stop", "box": [0, 0, 12, 8]},
                                                             {"text": "main street", "box": [40, 30, 48, 32]}]),
               *shapes["records"]]
    data = _write(root, records, "regions.json")
    recs, _ = read_records(data, root)
    ds = LlavaDataset(recs, get_template("v1", tok), tower.preprocess, model.n_image_tokens, 256, tower.image_size,
                      regions=mapper, log=DEVNULL)
    # 48 x 32 -> the 48 px square, 8 px down: [0, 8, 12, 16]; cells of 12 px: rows 0 and 1 of column 0, 4 px each
    first, second = ds[0]["ocr_regions"]
    assert first.patches == (0, 4) and first.text_ids == tuple(tok("stop", add_special_tokens=False).input_ids)
    # [40, 38, 48, 40]: 8 x 2 px of cell (3, 3) = 16 / 144 px^2 >= 5%
    assert second.patches == (15,)
    for i, rec in enumerate(ds.records[1:], 1):
        item = ds[i]
        if rec.image is None:
            assert item["ocr_regions"] == []
            continue
        w, h = Image.open(rec.image.path).size
        box, side = pad_box(rec.ocr[0].box, w, h)
        assert item["ocr_regions"][0].patches == tuple(box_to_tokens(box, (4, 4), side))
        assert item["ocr_regions"][0].patches  # every shape covers a cell
    batch = collate([ds[i] for i in range(3)], tok.pad_token_id)
    assert [len(r) for r in batch["ocr_regions"]] == [2, 1, 1]


def test_a_box_outside_its_image_is_an_error_naming_the_record(parts, stage1, shapes):
    from sailflow.llava.data import LlavaDataset, read_records
    from sailflow.llava.templates import get_template
    from sailflow.llava.train import setup_remgcl

    model, tok, tower = _model(parts, stage1)
    _, mapper = setup_remgcl({}, model, tower, tok, "pad")
    root = shapes["root"]
    data = _write(root, [_record("far", "images/train/000001.png", "x", [{"text": "a", "box": [20, 20, 40, 30]}])], "far.json")
    recs, _ = read_records(data, root)
    ds = LlavaDataset(recs, get_template("v1", tok), tower.preprocess, model.n_image_tokens, 256, tower.image_size,
                      regions=mapper, log=DEVNULL)
    with pytest.raises(RecordError, match=r"far.json: record far: ocr\[0\]: box .* outside the 32x32") as e:
        ds[0]
    assert e.value.reason == "bad_ocr"


# ---- training ---------------------------------------------------------------------------------------------


def test_stage2_with_remgcl_trains_and_logs_the_terms(parts, stage1, shapes, tmp_path):
    from sailflow.config import digest
    from sailflow.llava.train import train_stage

    remgcl = {"lambda_global": 0.5, "lambda_local": 0.25, "temperature_local": 0.25}
    out = tmp_path / "remgcl"
    args = _args(parts, stage1, out, _write(tmp_path, shapes["records"]), shapes["root"], epochs=2, global_batch_size=4,
                 per_device_batch_size=2, remgcl=remgcl)
    log = tmp_path / "stage.log"
    with open(log, "w") as f:
        info = train_stage(args, log=f)
    assert "[llava] remgcl: L = L_LM + 0.5 L_global (tau 0.5) + 0.25 L_local (tau 0.25); 9 records with 9 OCR regions, " \
           "4x4 patch grid" in log.read_text()
    lines = _log(out)
    assert len(lines) == info["steps"] == 6  # 10 records / 4 -> 3 steps (the last one of 2) x 2 epochs
    for line in lines:
        for key in ("loss", "lm_loss", "global_loss", "local_loss"):
            assert math.isfinite(line[key]) and line[key] != 0, (key, line)
        assert -2 <= line["global_loss"] <= 2 and -4 <= line["local_loss"] <= 4  # -cos / tau
        assert line["global_samples"] > 0 and line["local_regions"] > 0
        assert line["loss"] == pytest.approx(line["lm_loss"] + 0.5 * line["global_loss"] + 0.25 * line["local_loss"], rel=1e-5)
    assert sum(line["global_samples"] for line in lines) == 2 * 9  # every image record, each epoch
    assert sum(line["local_regions"] for line in lines) == 2 * 9 and not any(line["local_skipped"] for line in lines)
    manifest = json.loads((out / "config.json").read_text())
    assert manifest["remgcl"] == RemgclSettings.from_config(remgcl).to_dict()  # defaults filled in
    assert manifest["settings"]["remgcl"] == remgcl
    # lambda is part of the stage's identity: another lambda is another stage (and no resume across them)
    assert manifest["fingerprint"] == digest({k: v for k, v in args.items() if k != "out_dir"})
    other = {**args, "settings": {**args["settings"], "remgcl": {**remgcl, "lambda_local": 0.5}}}
    assert digest({k: v for k, v in other.items() if k != "out_dir"}) != manifest["fingerprint"]


def test_lambda_zero_is_exactly_a_plain_stage2(parts, stage1, shapes, tmp_path):
    from sailflow.llava.data import collate
    from sailflow.llava.remgcl import RemgclLoss
    from sailflow.llava.train import setup_remgcl, train_stage

    # one forward: the same loss, bit for bit, with the regions and counts in the batch
    model, tok, tower = _model(parts, stage1)
    _, mapper = setup_remgcl({}, model, tower, tok, "pad")
    ds = _dataset(model, tok, tower, shapes["records"], shapes["root"], tmp_path, mapper)
    batch = collate([ds[i] for i in range(len(ds))], tok.pad_token_id)
    plain_batch = {k: v for k, v in batch.items() if k != "ocr_regions"}
    model.remgcl = None
    plain = model(**plain_batch).loss
    model.remgcl = RemgclLoss.from_tokenizer(RemgclSettings(lambda_global=0, lambda_local=0), tok)
    zero = model(**batch, remgcl_items=torch.tensor([9, 9])).loss
    assert torch.equal(zero, plain)
    model.remgcl = RemgclLoss.from_tokenizer(RemgclSettings(lambda_global=0.5, lambda_local=0.5), tok)
    assert not torch.equal(model(**batch).loss, plain)  # the terms are not zero here

    # a whole stage: the same log and the same weights
    data = _write(tmp_path, shapes["records"])
    outs = {}
    for name, extra in (("plain", {}), ("zero", {"remgcl": {"lambda_global": 0.0, "lambda_local": 0.0}})):
        outs[name] = tmp_path / name
        train_stage(_args(parts, stage1, outs[name], data, shapes["root"], global_batch_size=4, per_device_batch_size=2,
                          **extra), log=DEVNULL)
    assert [r["loss"] for r in _log(outs["plain"])] == [r["loss"] for r in _log(outs["zero"])]
    assert all(r["global_loss"] == 0 and r["local_loss"] == 0 for r in _log(outs["zero"]))
    for f in ("connector.safetensors", "language_model/model.safetensors"):
        a, b = load_file(str(outs["plain"] / f)), load_file(str(outs["zero"] / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert json.loads((outs["plain"] / "config.json").read_text())["remgcl"] is None


def _uneven_records(shapes) -> list[dict]:
    """Four image records with 0, 1, 2 and 4 OCR regions; one answer is all stop words (no global term)."""
    boxes = [[0, 0, 8, 8], [8, 8, 24, 16], [16, 0, 32, 32], [0, 24, 8, 32]]
    words = ["stop", "main street", "open", "sign"]
    meta = shapes["meta"]
    out = []
    for k, n in enumerate((0, 1, 2, 4)):
        row = meta.iloc[k]
        ocr = [{"text": words[j], "box": boxes[j]} for j in range(n)]
        out.append(_record(f"u{k}", f"images/train/{row['row']:06d}.png", "the" if k == 2 else row["shape"], ocr))
    return out


def test_accumulated_micro_batches_train_like_one_big_batch(parts, stage1, shapes, tmp_path):
    """One SGD step over four records (global batch 4): two micro-batches of 2 and one batch of 4 give the same
    update, and so does one plain PyTorch step on the 4 records at once. The records have 0, 1, 2 and 4
    regions, so every split into two micro-batches has unequal region counts: averaging the micro-batches'
    own means would weigh regions differently than one batch does."""
    from sailflow.llava.data import collate
    from sailflow.llava.train import setup_remgcl, train_stage

    records = _uneven_records(shapes)
    # no two records hold half of the 7 regions
    assert all(sum(len(records[i]["ocr"]) for i in pair) != 3.5 for pair in itertools.combinations(range(4), 2))
    remgcl = {"lambda_global": 1.0, "lambda_local": 1.0}
    settings = dict(optim="sgd", lr=0.5, global_batch_size=4, epochs=1, max_grad_norm=1e9, remgcl=remgcl)
    data = _write(tmp_path, records)
    outs = {}
    for per_device in (2, 4):
        outs[per_device] = tmp_path / f"per_device_{per_device}"
        info = train_stage(_args(parts, stage1, outs[per_device], data, shapes["root"], per_device_batch_size=per_device,
                                 **settings), log=DEVNULL)
        assert info["steps"] == 1 and info["gradient_accumulation"] == 4 // per_device
    logs = {k: _log(v)[0] for k, v in outs.items()}
    assert logs[2]["local_regions"] == logs[4]["local_regions"] == 7 and logs[2]["global_samples"] == 3
    for key in ("loss", "lm_loss", "global_loss", "local_loss"):
        assert logs[2][key] == pytest.approx(logs[4][key], rel=1e-5, abs=1e-6), key

    # plain PyTorch: the 4 records as one batch, each term its batch mean, one SGD step
    model, tok, tower = _model(parts, stage1)
    _, mapper = setup_remgcl(remgcl, model, tower, tok, "pad")
    ds = _dataset(model, tok, tower, records, shapes["root"], tmp_path, mapper)
    batch = collate([ds[i] for i in range(4)], tok.pad_token_id)
    n_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    model(**batch, num_items_in_batch=torch.tensor(n_items)).loss.backward()
    plain_sgd_step(model, clip=None)
    for per_device, out in outs.items():
        got = load_file(str(out / "connector.safetensors"))
        for k, v in model.multi_modal_projector.state_dict().items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=f"per-device {per_device}: connector {k}")
        llm = load_file(str(out / "language_model" / "model.safetensors"))
        for k, v in model.language_model.state_dict().items():
            if k in llm:
                torch.testing.assert_close(llm[k], v, rtol=0, atol=1e-6, msg=f"per-device {per_device}: llm {k}")


# ---- bad data and settings ---------------------------------------------------------------------------------


def test_a_malformed_ocr_entry_is_an_error_naming_the_record(parts, stage1, shapes, tmp_path):
    from sailflow.llava.data import read_records
    from sailflow.llava.train import train_stage

    records = shapes["records"][:3] + [_record("bad-7", "images/train/000003.png", "circle", [{"text": "stop", "box": [0, 0, 5]}])]
    data = _write(tmp_path, records)
    args = _args(parts, stage1, tmp_path / "bad", data, shapes["root"], remgcl={})
    with pytest.raises(RecordError, match=r"records.json: record bad-7: ocr\[0\] 'box' is \[0, 0, 5\], not four finite numbers"):
        train_stage(args, log=DEVNULL)
    kept, drops = read_records(data, shapes["root"], on_error="drop", log=DEVNULL)
    assert [r.id for r in kept] == [r["id"] for r in records[:3]] and drops == {"bad_ocr": 1}


@pytest.mark.parametrize("remgcl,aspect,match", [
    ({"lambda": 1}, "pad", "settings.remgcl: remgcl: unknown setting"),
    ({"temperature_local": 0}, "pad", "temperature_local must be a number > 0"),
    ({}, "square", "image_aspect_ratio is 'square'; set it to pad"),
])
def test_settings_that_cannot_work_stop_the_stage_before_training(parts, stage1, shapes, tmp_path, remgcl, aspect, match):
    from sailflow.llava.train import StageError, train_stage

    args = _args(parts, stage1, tmp_path / "x", _write(tmp_path, shapes["records"]), shapes["root"], remgcl=remgcl)
    args["image_aspect_ratio"] = aspect
    with pytest.raises(StageError, match=match):
        train_stage(args, log=DEVNULL)
    assert not (tmp_path / "x" / "config.json").exists()


def test_the_local_term_needs_one_image_token_per_patch(parts):
    from sailflow.llava.train import StageError, build_model, setup_remgcl

    args = stage_args(parts, "finetune", Path("unused"))
    args["connector"] = {"kind": "resampler", "n_queries": 4, "heads": 2}
    model, tok, tower = build_model(args)
    with pytest.raises(StageError, match="4 image tokens per image; REMGCL's local term needs one token per patch"):
        setup_remgcl({}, model, tower, tok, "pad")
    settings, mapper = setup_remgcl({"lambda_local": 0}, model, tower, tok, "pad")  # the global term alone works
    assert mapper is None and model.remgcl.settings == settings


def test_two_processes_train_like_one(parts, stage1, shapes, tmp_path):
    """The same step on 2 processes (DDP over gloo, 2 x 2 records): the step's counts are summed over the
    ranks as the token count is, so the update and the logged terms equal one process's."""
    import subprocess
    import sys

    from sailflow.llava.train import train_stage

    remgcl = {"lambda_global": 1.0, "lambda_local": 1.0}
    settings = dict(optim="sgd", lr=0.5, global_batch_size=4, per_device_batch_size=2, epochs=1, max_grad_norm=1e9, remgcl=remgcl)
    data = _write(tmp_path, _uneven_records(shapes))
    one = _args(parts, stage1, tmp_path / "one", data, shapes["root"], **settings)
    train_stage(one, log=DEVNULL)
    two = {**one, "out_dir": str(tmp_path / "two")}
    (tmp_path / "two.json").write_text(json.dumps(two))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                          "sailflow.llava.train", str(tmp_path / "two.json")], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    a, b = _log(tmp_path / "one")[0], _log(tmp_path / "two")[0]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world"] == 2
    assert (a["global_samples"], a["local_regions"]) == (b["global_samples"], b["local_regions"]) == (3, 7)
    for key in ("loss", "lm_loss", "global_loss", "local_loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for f in ("connector.safetensors", "language_model/model.safetensors"):
        x, y = load_file(str(tmp_path / "one" / f)), load_file(str(tmp_path / "two" / f))
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=1e-6, msg=f"{f} {k}")
