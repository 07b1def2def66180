"""The demo's evaluation sets, written in the on-disk formats of the real benchmarks.

From the held-out split (images never seen in training, drawn with another seed):

    shape/<shape>/<n>.png, colour/<colour>/<n>.png    class folders (ImageNet val layout)
    retrieval/captions.json + retrieval/images/         COCO-format Karpathy JSON, 5 captions per image
                                                        (five rewritten-caption styles of that image)

Newly drawn with a held-out seed (pairs that differ in one controlled way):

    winoground/examples.jsonl + images/                 the two captions swap the shape and background
                                                        colours: "a red circle on a blue background" vs
                                                        "a blue circle on a red background"
    mmvp/Questions.csv + "MLLM_VLM Images"/<Type>/      MMVP-VLM layout: per visual pattern (Color, Shape,
                                                        Size, Position, Background) pairs of images that
                                                        differ only in it, one statement each
"""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import pandas as pd

from sailflow.demo.instructions import describe, swap_colours
from sailflow.demo.shapes import COLOURS, POSITIONS, SHAPES, SIZES, draw_shape
from sailflow.evaluate.datasets import MMVP_IMAGE_FOLDER
from sailflow.io import atomic_path, write_json, write_jsonl

RETRIEVAL_SOURCES = ["shortIB_captions", "shortSV_captions", "shortLLA_captions", "longIB_captions", "longLLA_captions"]
MMVP_PATTERNS = ["Color", "Shape", "Size", "Position", "Background"]


def _fresh_dir(path: Path) -> Path:
    """An empty folder at ``path`` (a rerun replaces what an earlier one wrote)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def class_folders(meta: pd.DataFrame, image_dir: Path, out: Path, attribute: str) -> None:
    _fresh_dir(out)
    for row in meta.itertuples():
        dst = out / getattr(row, attribute) / f"{row.row:06d}.png"
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(image_dir / f"{row.row:06d}.png", dst)


def retrieval_set(meta: pd.DataFrame, captions: pd.DataFrame, image_dir: Path, annotations: Path, images_out: Path) -> None:
    _fresh_dir(images_out)
    images, annotations_list = [], []
    for row in meta.itertuples():
        name = f"{row.row:06d}.png"
        shutil.copyfile(image_dir / name, images_out / name)
        images.append({"id": int(row.row), "file_name": name})
        for source in RETRIEVAL_SOURCES:
            text = " ".join(str(captions.at[row.row, source]).split())  # one line, as COCO captions
            annotations_list.append({"id": len(annotations_list), "image_id": int(row.row), "caption": text})
    write_json(annotations, {"images": images, "annotations": annotations_list})


def _save(img, path: Path, fmt: str = "PNG") -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _attributes(rng: random.Random) -> dict:
    bg = rng.choice(list(COLOURS))
    return {"shape": rng.choice(SHAPES), "colour": rng.choice([c for c in COLOURS if c != bg]), "background": bg,
            "size": rng.choice(list(SIZES)), "position": rng.choice(list(POSITIONS))}


def _draw(a: dict, side: int, geometry_seed: int):
    # The same geometry seed gives both images of a pair the same radius and jitter.
    return draw_shape(a["shape"], a["colour"], a["background"], a["size"], a["position"], side, random.Random(geometry_seed))


def winoground_set(root: Path, n: int, side: int, seed: int) -> None:
    images = _fresh_dir(root / "images")
    rng = random.Random(seed)
    lines = []
    for k in range(n):
        a = _attributes(rng)
        b = swap_colours(a)
        g = rng.randrange(2**31)
        for j, attrs in enumerate((a, b)):
            _save(_draw(attrs, side, g), images / f"ex_{k}_img_{j}.png")
        lines.append({"id": k, "caption_0": describe(a), "caption_1": describe(b),
                      "image_0": f"ex_{k}_img_0", "image_1": f"ex_{k}_img_1", "tag": "colour swap", "collapsed_tag": "Object"})
    write_jsonl(root / "examples.jsonl", lines)


def _mmvp_pair(pattern: str, rng: random.Random) -> tuple[dict, dict, str, str]:
    """Two attribute sets that differ only in ``pattern``, and a statement for each."""
    a = _attributes(rng)
    if pattern == "Color":
        b = {**a, "colour": rng.choice([c for c in COLOURS if c not in (a["colour"], a["background"])])}
        say = lambda x: f"a {x['colour']} {x['shape']}"  # noqa: E731
    elif pattern == "Shape":
        b = {**a, "shape": rng.choice([s for s in SHAPES if s != a["shape"]])}
        say = lambda x: f"a {x['colour']} {x['shape']}"  # noqa: E731
    elif pattern == "Size":
        b = {**a, "size": "large" if a["size"] == "small" else "small"}
        say = lambda x: f"a {x['size']} {x['colour']} {x['shape']}"  # noqa: E731
    elif pattern == "Position":
        a["size"] = "small"  # room to move
        b = {**a, "position": rng.choice([p for p in POSITIONS if p != a["position"]])}
        say = lambda x: f"a {x['colour']} {x['shape']} in the {x['position']}"  # noqa: E731
    else:  # Background
        b = {**a, "background": rng.choice([c for c in COLOURS if c not in (a["colour"], a["background"])])}
        say = lambda x: f"a {x['colour']} {x['shape']} on a {x['background']} background"  # noqa: E731
    return a, b, say(a), say(b)


def mmvp_set(root: Path, pairs_per_pattern: int, side: int, seed: int) -> None:
    images = _fresh_dir(root / MMVP_IMAGE_FOLDER)
    rng = random.Random(seed)
    rows, qid = [], 1
    for pattern in MMVP_PATTERNS:
        (images / pattern).mkdir()
        for _ in range(pairs_per_pattern):
            a, b, sa, sb = _mmvp_pair(pattern, rng)
            g = rng.randrange(2**31)
            for attrs, statement in ((a, sa), (b, sb)):
                _save(_draw(attrs, side, g), images / pattern / f"{qid}.jpg", "JPEG")
                rows.append({"Question ID": qid, "Type": pattern, "Statement": statement})
                qid += 1
    with atomic_path(root / "Questions.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["Question ID", "Type", "Statement"], quoting=csv.QUOTE_NONNUMERIC)
            w.writeheader()
            w.writerows(rows)


def make_eval_sets(heldout_csv: str | Path, out: dict, side: int, seed: int, winoground_examples: int, mmvp_pairs_per_pattern: int) -> None:
    """Write every demo set; ``out`` maps shape, colour, retrieval_annotations, retrieval_images,
    winoground, mmvp to their paths."""
    heldout_csv = Path(heldout_csv)
    meta = pd.read_parquet(heldout_csv.with_suffix(".meta.parquet"))
    captions = pd.read_csv(heldout_csv, keep_default_na=False)
    image_dir = heldout_csv.parent / "images" / heldout_csv.stem
    class_folders(meta, image_dir, Path(out["shape"]), "shape")
    class_folders(meta, image_dir, Path(out["colour"]), "colour")
    retrieval_set(meta, captions, image_dir, Path(out["retrieval_annotations"]), Path(out["retrieval_images"]))
    winoground_set(Path(out["winoground"]), winoground_examples, side, seed + 2_000_003)
    mmvp_set(Path(out["mmvp"]), mmvp_pairs_per_pattern, side, seed + 3_000_017)
