"""Random access to images inside img2dataset webdataset tars.

``samples.parquet`` records, for every kept sample, the tar (``shard``) and the byte ``offset`` and
``size`` of its image member, so a reader seeks straight to it without scanning the tar.

:class:`ChunkImages` (a chunk's images, in ``samples.parquet`` order) and :class:`ImageFiles` (a list
of image files) are map-style datasets for a torch ``DataLoader``: every stage that reads images
(encoding, LLaVA training) reads them through these.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sailflow.data.images import decode_rgb


def read_sample_bytes(images_dir: str | os.PathLike, shard: str, offset: int, size: int) -> bytes:
    """The stored bytes of one image: ``size`` bytes at ``offset`` in ``images_dir/shard``."""
    with open(Path(images_dir) / shard, "rb") as f:
        f.seek(int(offset))
        data = f.read(int(size))
    if len(data) != int(size):
        raise OSError(f"{Path(images_dir) / shard}: expected {size} bytes at offset {offset}, got {len(data)}")
    return data


SAMPLE_COLUMNS = ["sample_id", "shard", "offset", "size"]


def captioned_samples(path: str | os.PathLike, caption_source: str, error: type[Exception] = ValueError) -> tuple[pd.DataFrame, int]:
    """The rows of a chunk's ``samples.parquet`` whose ``caption_source`` is not empty (a fresh index), and
    how many rows were left out for an empty one. An unreadable table or a missing column is ``error``
    naming the file (and, for a missing caption source, the sources the table has)."""
    try:
        table = pd.read_parquet(path)
    except Exception as e:
        raise error(f"{path}: cannot read this samples table ({type(e).__name__}: {e})") from None
    missing = [c for c in SAMPLE_COLUMNS + [caption_source] if c not in table.columns]
    if missing:
        sources = [c for c in table.columns if c not in SAMPLE_COLUMNS + ["key", "width", "height", "url"]]
        raise error(f"{path}: no column(s) {missing}; the caption sources of this dataset are {sources}")
    text = table[caption_source]
    ok = text.notna() & (text.astype(str).str.strip() != "")
    return table[ok].reset_index(drop=True), int((~ok).sum())


class ChunkImages:
    """Item i: ``(i, preprocess(RGB image of row i of samples.parquet))``."""

    def __init__(self, samples: pd.DataFrame, images_dir: str | Path, preprocess):
        self.images_dir = Path(images_dir)
        self.shard = samples["shard"].to_numpy()
        self.offset = samples["offset"].to_numpy()
        self.size = samples["size"].to_numpy()
        self.sample_id = samples["sample_id"].to_numpy()
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, i: int):
        data = read_sample_bytes(self.images_dir, self.shard[i], self.offset[i], self.size[i])
        try:
            return i, self.preprocess(decode_rgb(data))
        except Exception as e:  # the filter stage decoded this image: something changed on disk
            raise RuntimeError(f"{self.images_dir / self.shard[i]}: sample {self.sample_id[i]} no longer decodes ({e}); rerun the data stages") from None


class ImageFiles:
    """Item i: ``(i, preprocess(RGB image at paths[i]))``; an unreadable file is an error naming it."""

    def __init__(self, paths: list[str | Path], preprocess):
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(decode_rgb(Path(self.paths[i]).read_bytes()))
        except Exception as e:
            raise RuntimeError(f"{self.paths[i]}: cannot read this image ({e})") from None
