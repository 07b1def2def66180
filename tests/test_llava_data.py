"""LLaVA records, dataset, collator and the modality-length grouped sampler."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import solid
from PIL import Image
from test_llava_templates import SYS, conv, words  # noqa: F401  (words: a fixture)

from sailflow.llava.data import (
    ImageRef,
    LlavaDataset,
    ModalityLengthGroupedSampler,
    Record,
    RecordError,
    collate,
    length_grouped_indices,
    modality_length_grouped_indices,
    read_records,
    records_from_dataset,
    split_to_even_chunks,
)
from sailflow.llava.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, get_template

I, X = IGNORE_INDEX, IMAGE_TOKEN_INDEX


def preprocess(img: Image.Image) -> torch.Tensor:
    """A stand-in for a tower's processor: 8x8, [0, 1]."""
    a = np.asarray(img.resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


# ---- read_records -------------------------------------------------------------------------------
def good_records():
    return [
        {"id": "img1", "image": "a/red.png", "conversations": conv(("human", "What color?\n<image>"), ("gpt", "red square"))},
        {"id": 7, "conversations": conv(("gpt", "Hi"), ("human", "Is it big?"), ("gpt", "No"))},  # int id, leading gpt
        {"id": "img2", "image": ["a/blue.png"], "conversations": conv(("human", "<image>\nWhat color?"), ("gpt", "blue"))},
    ]


BAD = {  # reason -> a record that must be refused for it
    "missing_id": {"conversations": conv(("human", "a"), ("gpt", "b"))},
    "missing_image": {"id": "m", "image": "a/none.png", "conversations": conv(("human", "<image>"), ("gpt", "b"))},
    "image_in_text_only": {"id": "t", "conversations": conv(("human", "<image>\na"), ("gpt", "b"))},
    "no_image_placeholder": {"id": "n", "image": "a/red.png", "conversations": conv(("human", "a"), ("gpt", "b"))},
    "two_images": {"id": "2", "image": "a/red.png", "conversations": conv(("human", "<image> <image>"), ("gpt", "b"))},
    "roles_out_of_order": {"id": "r", "conversations": conv(("human", "a"), ("gpt", "b"), ("gpt", "c"))},
    "empty_turn": {"id": "e", "conversations": conv(("human", "a"), ("gpt", "  "))},
    "bad_format": {"id": "f", "conversations": conv(("system", "a"), ("gpt", "b"))},
}
MESSAGES = {
    "missing_id": "record #3: has no id",
    "missing_image": "record m: image file .*none.png does not exist",
    "image_in_text_only": "record t: <image> in a record without an image",
    "no_image_placeholder": "record n: has an image but no <image>",
    "two_images": "record 2: 2 <image> placeholders",
    "roles_out_of_order": "record r: expected alternating human/gpt turns ending with gpt",
    "empty_turn": "record e: turn 1 \\(gpt\\) is empty",
    "bad_format": "record f: turn 0 is from 'system'",
}


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "a/red.png").write_bytes(solid((255, 0, 0)))
    (folder / "a/blue.png").write_bytes(solid((0, 0, 255)))
    return folder


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_read_records_json_and_jsonl(tmp_path, image_folder, fmt):
    path = tmp_path / f"data.{fmt}"
    items = good_records()
    path.write_text(json.dumps(items, indent=1) if fmt == "json" else "\n".join(json.dumps(r) for r in items) + "\n")
    records, drops = read_records(path, image_folder)
    assert drops == Counter()
    assert [r.id for r in records] == ["img1", "7", "img2"]
    assert records[0].image == ImageRef(str(image_folder / "a/red.png"))
    assert records[1].image is None
    assert records[2].image.read().getpixel((0, 0)) == (0, 0, 255)  # a one-element image list is that image
    assert records[0].source == str(path)


@pytest.mark.parametrize("reason", sorted(BAD))
def test_read_records_refuses_each_bad_record(tmp_path, image_folder, reason):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(good_records() + [BAD[reason]]))
    with pytest.raises(RecordError, match=f"{path}: {MESSAGES[reason]}") as e:
        read_records(path, image_folder)
    assert e.value.reason == reason


def test_read_records_drops_and_counts(tmp_path, image_folder):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(r) for r in good_records() + list(BAD.values())]
    lines += ['{"id": "broken", ', json.dumps({"id": "list", "image": ["a/red.png", "a/blue.png"],
                                               "conversations": conv(("human", "<image>"), ("gpt", "b"))})]
    path.write_text("\n".join(lines))
    log = io.StringIO()
    records, drops = read_records(path, image_folder, on_error="drop", log=log)
    assert [r.id for r in records] == ["img1", "7", "img2"]
    assert drops == Counter({**{r: 1 for r in BAD}, "two_images": 2, "bad_json": 1})
    assert "kept 3 records, dropped 10" in log.getvalue()
    assert "missing_image, e.g." in log.getvalue() and "none.png" in log.getvalue()


def test_read_records_bad_json_file(tmp_path, image_folder):
    path = tmp_path / "data.json"
    path.write_text('[{"id": 1,\n "conversations": ]')
    with pytest.raises(ValueError, match=r"data.json: not valid JSON \(line 2"):
        read_records(path, image_folder)


# ---- records_from_dataset -------------------------------------------------------------------------
def write_tar(path, members: dict[str, bytes]) -> dict[str, tuple[int, int]]:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def test_records_from_dataset(tmp_path):
    images = tmp_path / "chunk0/images"
    images.mkdir(parents=True)
    where = write_tar(images / "00000.tar", {"0.png": solid((255, 0, 0)), "1.png": solid((0, 255, 0)), "2.png": solid((0, 0, 255))})
    samples = pd.DataFrame({
        "sample_id": [10, 11, 12], "key": ["0", "1", "2"], "shard": ["00000.tar"] * 3,
        "offset": [where[f"{k}.png"][0] for k in range(3)], "size": [where[f"{k}.png"][1] for k in range(3)],
        "raw": ["a red square", None, "a blue square"], "short": ["red", "green", " "],
    })
    samples.to_parquet(tmp_path / "chunk0/samples.parquet")
    records, drops = records_from_dataset([tmp_path / "chunk0/samples.parquet"], [images], "raw", dataset="demo")
    assert drops == Counter({"empty_caption": 1})
    assert [r.id for r in records] == ["demo/10", "demo/12"]
    assert records[1].conversations == conv(("human", "<image>"), ("gpt", "a blue square"))
    assert records[1].image == ImageRef(str(images / "00000.tar"), where["2.png"][0], where["2.png"][1])
    assert records[1].image.read().getpixel((3, 3)) == (0, 0, 255)
    records, drops = records_from_dataset([tmp_path / "chunk0/samples.parquet"], [images], "short", dataset="demo")
    assert [r.conversations[1]["value"] for r in records] == ["red", "green"] and drops == Counter({"empty_caption": 1})
    with pytest.raises(ValueError, match=r"no column\(s\) \['long'\]; the caption sources of this dataset are \['raw', 'short'\]"):
        records_from_dataset([tmp_path / "chunk0/samples.parquet"], [images], "long", dataset="demo")


def test_image_ref_errors_name_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.jpg: cannot read this image"):
        ImageRef(str(tmp_path / "bad.jpg")).read()
    with pytest.raises(OSError, match=r"x.tar \(member at offset 512, 10 bytes\): cannot read"):
        ImageRef(str(tmp_path / "x.tar"), 512, 10).read()


# ---- LlavaDataset and collate --------------------------------------------------------------------
def make_records(folder):
    red = ImageRef(str(folder / "a/red.png"))
    return [
        Record("img", red, conv(("human", "<image>\nWhat color?"), ("gpt", "red square")), "mem.json"),
        Record("txt", None, conv(("human", "Is it big?"), ("gpt", "No")), "mem.json"),
        Record("long", None, conv(("human", "What color?"), ("gpt", " ".join(["red"] * 40))), "mem.json"),
        Record("multi", red, conv(("human", "<image>\nWhat color?"), ("gpt", "red"), ("human", "Is it big?"), ("gpt", "No")), "mem.json"),
    ]


def test_dataset_items_lengths_and_drops(words, image_folder):  # noqa: F811
    log = io.StringIO()
    ds = LlavaDataset(make_records(image_folder), get_template("v1", words), preprocess, n_image_tokens=4, max_length=52,
                      image_size=(8, 8), log=log)
    # "long": 37 + 41 = 78 > 52 positions, the cut leaves part of the answer; "multi": 51 ids - 1 + 4 = 54 > 52,
    # the cut leaves "USER : Is it big ? ASSISTANT :" after the first answer
    assert [r.id for r in ds.records] == ["img", "txt", "long", "multi"]
    assert ds.lengths == [42 - 1 + 4, 40, 52, 52]
    assert ds.modality_lengths == [45, -40, -52, 52]
    assert ds.drops == Counter() and ds.truncated == 2 and ds.mismatches == 0
    item = ds[0]
    assert item["input_ids"].tolist() == [1, *SYS, 31, 32, X, 6, 34, 35, 36, 33, 32, 37, 38, 2]
    assert item["labels"].tolist() == [I] * 39 + [37, 38, 2]
    assert item["has_image"] is True and item["pixel_values"].shape == (3, 8, 8)
    assert torch.allclose(item["pixel_values"][:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    item = ds[1]
    assert item["input_ids"].tolist() == [1, *SYS, 31, 32, 39, 40, 41, 36, 33, 32, 42, 2]
    assert item["labels"].tolist() == [I] * 38 + [42, 2]
    assert item["has_image"] is False and torch.equal(item["pixel_values"], torch.zeros(3, 8, 8))
    assert ds[2]["labels"].tolist() == [I] * 37 + [37] * 15  # 15 of the 40 answer words fit
    assert ds[3]["input_ids"].tolist()[-10:] == [37, 2, 31, 32, 39, 40, 41, 36, 33, 32]
    assert ds[3]["labels"].tolist()[-10:] == [37, 2] + [I] * 8
    assert "4 records (2 with an image, 2 text-only), dropped 0" in log.getvalue()


def test_dataset_counts_truncated_and_template_drops(words, image_folder):  # noqa: F811
    records = make_records(image_folder)
    plain = get_template("plain", words)
    with pytest.raises(RecordError, match="mem.json: record txt: template 'plain': the plain template .* needs an image"):
        LlavaDataset(records, plain, preprocess, 4, 52, (8, 8))
    log = io.StringIO()
    ds = LlavaDataset(records, plain, preprocess, 4, 52, (8, 8), on_error="drop", log=log)
    assert [r.id for r in ds.records] == ["img"]
    assert ds.drops == Counter({"plain_text_only": 2, "plain_multi_turn": 1})
    ds = LlavaDataset(records, get_template("v1", words), preprocess, 4, 39 + 3, (8, 8), log=log)
    # up to "ASSISTANT :" of the first turn the image records need 42 positions: no answer token left
    assert [r.id for r in ds.records] == ["txt", "long"] and ds.drops == Counter({"truncated": 2})
    with pytest.raises(ValueError, match="no record left to train on"):
        LlavaDataset(records[:1], plain, preprocess, 4, 5, (8, 8), log=log)


def test_dataset_unreadable_image_names_file_and_record(words, image_folder):  # noqa: F811
    ds = LlavaDataset(make_records(image_folder)[:1], get_template("v1", words), preprocess, 4, 64, (8, 8), log=io.StringIO())
    (image_folder / "a/red.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RecordError, match=r"mem.json: record img: .*red.png: cannot read this image"):
        ds[0]


def test_collate_pads_right():
    batch = [
        {"input_ids": torch.tensor([1, X, 37, 6]), "labels": torch.tensor([I, I, 37, 6]),
         "pixel_values": torch.ones(3, 2, 2), "has_image": True},
        {"input_ids": torch.tensor([1, 42]), "labels": torch.tensor([I, 42]), "pixel_values": torch.zeros(3, 2, 2), "has_image": False},
    ]
    out = collate(batch, pad_token_id=3)
    assert out["input_ids"].tolist() == [[1, X, 37, 6], [1, 42, 3, 3]]
    assert out["labels"].tolist() == [[I, I, 37, 6], [I, 42, I, I]]
    assert out["attention_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert out["pixel_values"].shape == (2, 3, 2, 2) and out["pixel_values"][0].eq(1).all() and out["pixel_values"][1].eq(0).all()
    assert out["has_image"].tolist() == [True, False] and out["has_image"].dtype == torch.bool
    # pad id 42 is also a real token: the mask still comes from the lengths
    assert collate(batch, pad_token_id=42)["attention_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    with pytest.raises(ValueError, match="without any supervised token"):
        collate([{**batch[1], "labels": torch.tensor([I, I])}], pad_token_id=3)


# ---- the sampler ----------------------------------------------------------------------------------
def test_split_to_even_chunks():
    lengths = [9, 1, 8, 2, 7, 3, 6, 4]
    order = sorted(range(8), key=lambda i: lengths[i], reverse=True)  # 0 2 4 6 7 5 3 1
    # 9 -> A, 8 -> B, 7 -> B (8 < 9), 6 -> A (9 < 15), 4 -> A (15 = 15: the first), 3 -> B (15 < 19),
    # 2 -> B (18 < 19; B is full), 1 -> A
    assert split_to_even_chunks(order, lengths, 2) == [[0, 6, 7, 1], [2, 4, 5, 3]]
    assert split_to_even_chunks([0, 1, 2], lengths, 2) == [[0, 2], [1]]  # not divisible: round robin


def reference_modality_grouped(lengths, batch_size, world_size, generator):
    """LLaVA's get_modality_length_grouped_indices (llava_trainer.py), transcribed, with the
    generator passed everywhere (LLaVA passes None to the per-modality calls)."""
    def grouped(lengths):
        indices = torch.randperm(len(lengths), generator=generator)
        m = world_size * batch_size
        megabatches = [indices[i : i + m].tolist() for i in range(0, len(lengths), m)]
        megabatches = [sorted(mb, key=lambda i: lengths[i], reverse=True) for mb in megabatches]
        megabatches = [split_to_even_chunks(mb, lengths, world_size) for mb in megabatches]
        return [i for mb in megabatches for batch in mb for i in batch]

    mm_indices, mm_lengths = zip(*[(i, l) for i, l in enumerate(lengths) if l > 0])
    lang_indices, lang_lengths = zip(*[(i, -l) for i, l in enumerate(lengths) if l < 0])
    mm_shuffle = [mm_indices[i] for i in grouped(mm_lengths)]
    lang_shuffle = [lang_indices[i] for i in grouped(lang_lengths)]
    m = world_size * batch_size
    mm_megabatches = [mm_shuffle[i : i + m] for i in range(0, len(mm_shuffle), m)]
    lang_megabatches = [lang_shuffle[i : i + m] for i in range(0, len(lang_shuffle), m)]
    additional_batch = mm_megabatches[-1] + lang_megabatches[-1]
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    megabatches = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator)]
    if len(additional_batch) > 0:
        megabatches.append(sorted(additional_batch))
    return [i for megabatch in megabatches for i in megabatch]


def modality_lengths(n: int, text_fraction: float, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    n_text = round(n * text_fraction)
    signs = np.array([-1] * n_text + [1] * (n - n_text))
    rng.shuffle(signs)
    return (signs * rng.integers(5, 500, size=n)).tolist()


def test_matches_llava_when_both_last_megabatches_are_partial():
    lengths = modality_lengths(203, 0.3)  # 142 image (142 % 12 = 10), 61 text (61 % 12 = 1)
    ours = modality_length_grouped_indices(lengths, 3, 4, torch.Generator().manual_seed(5))
    assert ours == reference_modality_grouped(lengths, 3, 4, torch.Generator().manual_seed(5))


@pytest.mark.parametrize("text_fraction", [0.0, 0.5, 1.0])
def test_every_full_step_has_one_modality(text_fraction):
    batch_size, world_size = 4, 2  # a global step: 8 records
    lengths = modality_lengths(203, text_fraction)
    order = modality_length_grouped_indices(lengths, batch_size, world_size, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(203))
    step = batch_size * world_size
    n_image, n_text = sum(l > 0 for l in lengths), sum(l < 0 for l in lengths)
    tail = n_image % step + n_text % step  # the partial megabatches, merged at the end
    for start in range(0, 203 - tail, step):
        assert len({lengths[i] > 0 for i in order[start : start + step]}) == 1, f"step at {start} mixes modalities"
    if 0 < text_fraction < 1:
        assert {lengths[i] > 0 for i in order[203 - tail :]} == {True, False}  # the one mixed megabatch
    # each full megabatch: sorted longest first, then dealt into world_size batches of similar total length
    absolute = [abs(l) for l in lengths]
    for start in range(0, 203 - tail, step):
        megabatch = order[start : start + step]
        by_length = sorted(megabatch, key=lambda i: absolute[i], reverse=True)
        dealt = [i for chunk in split_to_even_chunks(by_length, absolute, world_size) for i in chunk]
        assert [absolute[i] for i in dealt] == [absolute[i] for i in megabatch]  # lengths: ties may swap


def test_one_modality_falls_back_to_length_grouping():
    lengths = [5, 3, 9, 1, 7, 2]
    for sign in (1, -1):
        got = modality_length_grouped_indices([sign * l for l in lengths], 3, 1, torch.Generator().manual_seed(1))
        assert got == length_grouped_indices(lengths, 3, 1, torch.Generator().manual_seed(1))
        for start in (0, 3):  # world_size 1: each megabatch is one batch, sorted longest first
            assert [lengths[i] for i in got[start : start + 3]] == sorted((lengths[i] for i in got[start : start + 3]), reverse=True)
    with pytest.raises(ValueError, match="length 0"):
        modality_length_grouped_indices([3, 0, -2], 1, 1)


def test_sampler_epochs_and_seed():
    lengths = modality_lengths(100, 0.5)
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=3)
    first = list(sampler)
    assert len(sampler) == 100 and sorted(first) == list(range(100))
    assert list(sampler) == first  # the same epoch, the same order
    state = torch.random.get_rng_state()
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(100))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never used
    assert list(ModalityLengthGroupedSampler(lengths, 4, 2, seed=4)) != first
