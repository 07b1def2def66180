"""Random access to images inside img2dataset webdataset tars.

``samples.parquet`` records, for every kept sample, the tar (``shard``) and the byte ``offset`` and
``size`` of its image member, so a reader seeks straight to it without scanning the tar.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_sample_bytes(images_dir: str | os.PathLike, shard: str, offset: int, size: int) -> bytes:
    """The stored bytes of one image: ``size`` bytes at ``offset`` in ``images_dir/shard``."""
    with open(Path(images_dir) / shard, "rb") as f:
        f.seek(int(offset))
        data = f.read(int(size))
    if len(data) != int(size):
        raise OSError(f"{Path(images_dir) / shard}: expected {size} bytes at offset {offset}, got {len(data)}")
    return data
