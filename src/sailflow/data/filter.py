"""Filter one downloaded chunk: decode every image fully and apply the size limits.

Output ``chunks/{chunk}/filtered.parquet``, one row per image that passed, sorted by sample_id:

    sample_id, key (img2dataset key, unique within its tar), shard (the tar's path relative to
    images/: ``00003.tar``, or ``retry1/00000.tar`` for a retried download), offset, size (the image
    member's bytes inside the tar), width, height, sha256 (of the stored bytes)

and ``chunks/{chunk}/filter.json`` with the drops by reason. Exact duplicates are removed across
the whole dataset later, by the cleanup stage.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from sailflow.data.images import ImageLimits, ImageRejected, decode_rgb
from sailflow.io import write_json, write_parquet

_SIDECARS = (".json", ".txt")
FILTERED_COLUMNS = ["sample_id", "key", "shard", "offset", "size", "width", "height", "sha256"]


class ShardError(RuntimeError):
    pass


def iter_tar_images(tar_path: Path):
    """Yield ``(key, offset, size, bytes)`` for each image member of a webdataset tar, in tar order."""
    try:
        with tarfile.open(tar_path, "r:") as tf:
            for m in tf:
                if not m.isfile() or m.name.endswith(_SIDECARS):
                    continue
                key = m.name.rsplit("/", 1)[-1].split(".", 1)[0]
                data = tf.extractfile(m).read()
                yield key, m.offset_data, m.size, data
    except tarfile.TarError as e:
        raise ShardError(f"{tar_path}: unreadable tar ({e}); delete it and its _stats.json, then rerun the download") from None


def filter_shard(images_dir: Path, stem: str, limits: ImageLimits) -> tuple[list[dict], Counter, dict]:
    """Check every image of shard ``stem``; return (kept rows, drop counts, one example per reason)."""
    meta = pd.read_parquet(images_dir / f"{stem}.parquet", columns=["key", "sample_id", "status"])
    ids = dict(zip(meta["key"].astype(str), meta["sample_id"].astype("int64")))
    kept, dropped, examples = [], Counter(), {}
    for key, offset, size, data in iter_tar_images(images_dir / f"{stem}.tar"):
        if key not in ids:
            raise ShardError(f"{images_dir}/{stem}.tar: member {key!r} has no row in {stem}.parquet")
        try:
            img = decode_rgb(data, limits)
        except ImageRejected as e:
            dropped[e.reason] += 1
            examples.setdefault(e.reason, f"sample {ids[key]}: {e}")
            continue
        kept.append(
            {
                "sample_id": ids[key],
                "key": key,
                "shard": f"{stem}.tar",
                "offset": offset,
                "size": size,
                "width": img.width,
                "height": img.height,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return kept, dropped, examples


def _filter_shard_star(args):
    return filter_shard(*args)


def filter_chunk(
    download_json: dict,
    images_dir: str | Path,
    out_parquet: str | Path,
    out_json: str | Path,
    *,
    limits: ImageLimits,
    processes: int = 1,
) -> dict:
    """Filter every shard listed in ``download_json``; write ``out_parquet`` and ``out_json``.

    ``download_json["shards"]`` are paths relative to ``images_dir`` without suffix (``00000``,
    ``retry1/00000``: see sailflow.data.download).
    """
    images_dir = Path(images_dir)
    jobs = [(images_dir, stem, limits) for stem in download_json["shards"]]
    if processes > 1 and len(jobs) > 1:
        # fork: this runs inside a Snakemake script, whose main module cannot be re-imported (spawn).
        with multiprocessing.get_context("fork").Pool(min(processes, len(jobs))) as pool:
            results = list(tqdm(pool.imap(_filter_shard_star, jobs), total=len(jobs), desc="filter shards", unit="shard", mininterval=10))
    else:
        results = [filter_shard(*j) for j in tqdm(jobs, desc="filter shards", unit="shard", mininterval=10)]
    rows, dropped, examples = [], Counter(), {}
    for kept, d, ex in results:
        rows.extend(kept)
        dropped.update(d)
        for k, v in ex.items():
            examples.setdefault(k, v)
    df = pd.DataFrame(rows, columns=FILTERED_COLUMNS).astype(
        {"sample_id": "int64", "offset": "int64", "size": "int64", "width": "int64", "height": "int64"}
    )
    df = df.sort_values("sample_id", kind="stable").reset_index(drop=True)
    if df["sample_id"].duplicated().any():
        raise ShardError(f"{images_dir}: a sample_id occurs in more than one tar member")
    report = {
        "dataset": download_json["dataset"],
        "chunk": download_json["chunk"],
        "images": len(df) + sum(dropped.values()),
        "kept": len(df),
        "dropped": dict(sorted(dropped.items())),
        "example_errors": examples,
    }
    if report["images"] != download_json["downloaded"]:
        raise ShardError(
            f"{images_dir}: the tars hold {report['images']} images but img2dataset reported "
            f"{download_json['downloaded']} successes; rerun the download of this chunk"
        )
    write_parquet(out_parquet, df)
    write_json(out_json, report)
    return report
