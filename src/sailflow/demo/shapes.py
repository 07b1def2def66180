"""The embedded demo dataset: coloured shapes on coloured backgrounds, with DreamLIP-style captions.

Each image gets the eight DreamLIP columns: ``Image Path`` (a file:// URL), a short noisy
``raw_caption`` (web alt-text style) and six "rewritten" captions that describe the same image in
different words and detail (short/long x IB/SV/LLA). Long captions span several lines, as real
DreamLIP captions do, so the CSV exercises quoted multi-line fields.

A ``{split}.meta.parquet`` beside each CSV keeps the attributes (shape, colour, background, size,
position) for building evaluation sets.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from sailflow.data.urls import DREAMLIP_COLUMNS
from sailflow.io import atomic_path, write_parquet

SHAPES = ["circle", "square", "triangle", "star", "cross", "hexagon"]
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (130, 40, 170),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SIZES = {"small": (0.16, 0.24), "large": (0.32, 0.42)}  # radius as a fraction of the image side
POSITIONS = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    import math

    if kind == "triangle":
        angles = [-90, 30, 150]
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in angles]
    if kind == "hexagon":
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in range(0, 360, 60)]
    if kind == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = math.radians(-90 + 36 * i)
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if kind == "cross":
        t = r * 0.35
        return [
            (cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
            (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t),
        ]
    raise ValueError(kind)


def draw_shape(shape: str, colour: str, background: str, size: str, position: str, side: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (side, side), COLOURS[background])
    d = ImageDraw.Draw(img)
    lo, hi = SIZES[size]
    r = rng.uniform(lo, hi) * side
    px, py = POSITIONS[position]
    jitter = 0.06 * side
    cx = min(max(px * side + rng.uniform(-jitter, jitter), r), side - r)
    cy = min(max(py * side + rng.uniform(-jitter, jitter), r), side - r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        d.polygon(_polygon(shape, cx, cy, r), fill=fill)
    return img


def captions_for(a: dict, rng: random.Random) -> dict[str, str]:
    """Seven caption sources for attributes ``a`` (shape, colour, background, size, position)."""
    s, c, bg, sz, pos = a["shape"], a["colour"], a["background"], a["size"], a["position"]
    raw_templates = [
        f"{c} {s}",
        f"{s} clipart {c}",
        f"IMG_{rng.randint(1000, 9999)} {c} {s} on {bg}",
        f"{c} {s} icon - stock vector",
        f"{s}",
        f"{bg} wallpaper with {c} {s}",
    ]
    where = "in the middle" if pos == "center" else f"in the {pos} corner"
    return {
        "raw_caption": rng.choice(raw_templates),
        "shortIB_captions": f"a {c} {s} on a {bg} background",
        "longIB_captions": f"The picture contains a single {sz} {c} {s}.\nIt sits {where} of a flat {bg} background.",
        "shortSV_captions": f"A {sz} {c} {s} on a {bg} background.",
        "longSV_captions": (
            f"The image shows a {sz} {c} {s} placed {where} of the frame.\n"
            f"The background is a plain {bg} colour, and there are no other objects in the scene."
        ),
        "shortLLA_captions": f"{c.capitalize()} {s}, {bg} backdrop.",
        "longLLA_captions": f"In this simple graphic, a {c} {s} of {sz} size appears {where}.\nEverything around it is {bg}.",
    }


def make_split(out_dir: str | Path, split: str, n: int, seed: int, side: int = 96, missing_raw: float = 0.02) -> Path:
    """Draw ``n`` images into ``out_dir/images/{split}/`` and write ``out_dir/{split}.csv``.

    A fraction ``missing_raw`` of rows gets an empty raw caption (as in real alt-text dumps); the
    rewritten captions are always present, so those rows are kept.
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows, meta = [], []
    for i in range(n):
        bg = rng.choice(list(COLOURS))
        a = {
            "shape": rng.choice(SHAPES),
            "colour": rng.choice([c for c in COLOURS if c != bg]),
            "background": bg,
            "size": rng.choice(list(SIZES)),
            "position": rng.choice(list(POSITIONS)),
        }
        img = draw_shape(a["shape"], a["colour"], a["background"], a["size"], a["position"], side, rng)
        path = img_dir / f"{i:06d}.png"
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
        caps = captions_for(a, rng)
        if rng.random() < missing_raw:
            caps["raw_caption"] = ""
        rows.append({"Image Path": path.resolve().as_uri(), **caps})
        meta.append({"row": i, "url": rows[-1]["Image Path"], **a})
    csv_path = out_dir / f"{split}.csv"
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=DREAMLIP_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    write_parquet(out_dir / f"{split}.meta.parquet", pd.DataFrame(meta))
    return csv_path
