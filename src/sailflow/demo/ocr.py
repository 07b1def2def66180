"""OCR regions for the demo's shapes: each shape's name at its bounding box, in the ``ocr`` field that
REMGCL's local term reads (``[{"text": ..., "box": [x0, y0, x1, y1]}]``, pixels of the image file).

The demo has no text in its images, so this stands in for a precomputed OCR pass: the "word" is the
shape's name and its box is where the shape is. The box is read off the image itself, not recomputed
from the drawing's random radius and jitter: a shape is drawn without anti-aliasing in one colour on a
background of another (:func:`sailflow.demo.shapes.draw_shape`), so the pixels that differ from the
background colour are exactly the shape's.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
from PIL import Image

from sailflow.demo.shapes import COLOURS


def shape_box(image: Image.Image, background: tuple[int, int, int]) -> list[int] | None:
    """``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive: pixel column c spans [c, c + 1)) bounding every
    pixel of ``image`` whose RGB differs from ``background``; None when there is none."""
    rgb = np.asarray(image.convert("RGB"))
    ys, xs = np.nonzero((rgb != np.asarray(background, dtype=rgb.dtype)).any(-1))
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def image_path(url: str) -> Path:
    """The file of a shapes meta row's ``url`` (a ``file://`` URL, percent-encoded where the path needs it)."""
    return Path(url2pathname(urlparse(url).path)).resolve()


def shape_regions(meta: pd.DataFrame) -> dict[Path, list[dict]]:
    """The OCR regions of each image of a shapes meta table (``{split}.meta.parquet``: row, url, shape,
    colour, background, size, position), keyed by the image's resolved path: one region, the shape's
    name at its box. An image showing no shape is an error naming it."""
    out = {}
    for row in meta.itertuples(index=False):
        path = image_path(row.url)
        with Image.open(path) as image:
            box = shape_box(image, COLOURS[row.background])
        if box is None:
            raise ValueError(f"{path}: no pixel differs from the {row.background} background; is it a demo shape "
                             f"(meta row {row.row})?")
        out[path] = [{"text": row.shape, "box": box}]
    return out


def add_ocr(records: list[dict], meta: pd.DataFrame, image_root: str | Path) -> list[dict]:
    """``records`` (LLaVA format, ``image`` relative to ``image_root``) with ``"ocr"`` added to those whose
    image is one of ``meta``'s (:func:`shape_regions`); other records (text-only, other images) are
    returned as they are. New dicts; the inputs are not changed."""
    regions = shape_regions(meta)
    root = Path(image_root)
    out = []
    for rec in records:
        found = regions.get((root / rec["image"]).resolve()) if rec.get("image") else None
        out.append({**rec, "ocr": [dict(r) for r in found]} if found else dict(rec))
    return out
