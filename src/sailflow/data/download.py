"""Download one chunk of a URL table with img2dataset (webdataset shards), resumably.

Layout of a chunk folder::

    chunks/{chunk}/urls.parquet          input (sample_id, url, captions)
    chunks/{chunk}/images/               img2dataset output: NNNNN.tar, NNNNN.parquet, NNNNN_stats.json
    chunks/{chunk}/images.settings.json  what the images were downloaded with (url table hash, options)
    chunks/{chunk}/download.json         written last, atomically: the job's declared output

``images/`` is not a declared Snakemake output on purpose: Snakemake deletes declared outputs before
a rerun, which would throw away every finished shard of a killed job. img2dataset's incremental mode
redoes exactly the shards without a ``_stats.json`` (the file it writes last). If the URL table or
a download option changed, the folder is wiped first, since incremental mode cannot tell.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from sailflow.io import read_json, write_json

class DownloadError(RuntimeError):
    """A chunk did not download well enough; the message says which chunk and why."""


_HTTP = re.compile(r"HTTP Error (\d+)")
_IMG2DATASET_REASONS = {
    "image too small": "too_small",
    "image area too large": "too_many_pixels",
    "aspect ratio too large": "bad_aspect_ratio",
    "Image decoding error": "undecodable",
}


def download_reason(error_message: str) -> str:
    """Map an img2dataset error message onto a manifest drop reason."""
    m = _HTTP.search(error_message)
    if m:
        return f"http_{m.group(1)}"
    if error_message in _IMG2DATASET_REASONS:
        return _IMG2DATASET_REASONS[error_message]
    low = error_message.lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if "x-robots-tag" in low:
        return "robots_disallowed"
    return "download_error"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def img2dataset_args(urls_path: Path, images_dir: Path, opts: dict, limits: dict, processes: int, threads: int) -> dict:
    """The keyword arguments for ``img2dataset.download`` for one chunk."""
    args = dict(
        url_list=str(urls_path),
        input_format="parquet",
        url_col="url",
        save_additional_columns=["sample_id"],
        output_format="webdataset",
        output_folder=str(images_dir),
        processes_count=max(1, int(processes)),
        thread_count=int(threads),
        number_sample_per_shard=int(opts["number_sample_per_shard"]),
        timeout=float(opts["timeout"]),
        retries=int(opts["retries"]),
        incremental_mode="incremental",
        enable_wandb=False,
        extract_exif=False,
        compute_hash=None,  # the filter stage hashes the stored bytes itself (for deduplication)
        user_agent_token=opts["user_agent_token"],
        disallowed_header_directives=list(opts["disallowed_header_directives"]),
        encode_format=opts["encode_format"],
        encode_quality=int(opts["encode_quality"]),
    )
    if opts["resize_mode"] == "no":
        # Keep the original bytes: every check (full decode, size, mode) happens in the filter stage
        # on what the server sent. Re-encoding here would hide truncated files (OpenCV fills them in).
        args.update(resize_mode="no", disable_all_reencoding=True)
    else:
        # img2dataset decodes and resizes: apply the size checks to the original first.
        args.update(
            resize_mode=opts["resize_mode"],
            image_size=int(opts["image_size"]),
            resize_only_if_bigger=bool(opts["resize_only_if_bigger"]),
            min_image_size=int(limits["min_side"]),
            max_image_area=float(limits["max_pixels"]),
            max_aspect_ratio=float(limits["max_aspect_ratio"]),
        )
    return args


# img2dataset sometimes never exits after its last shard (upstream issues #74, #289, #402).
FINISHED_GRACE_SECONDS = 60.0


def _run_img2dataset(args_path: Path, images_dir: Path, shards: list[int], log) -> int:
    """Run the launcher; stop it if it lingers ``FINISHED_GRACE_SECONDS`` after every shard finished."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sailflow.data.img2dataset_main", str(args_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    expected = [images_dir / f"{shard_stem(s)}_stats.json" for s in shards]
    finished_at = None
    try:
        while proc.poll() is None:
            time.sleep(1.0)
            if finished_at is None and all(p.exists() for p in expected):
                finished_at = time.monotonic()
            if finished_at is not None and time.monotonic() - finished_at > FINISHED_GRACE_SECONDS:
                print(f"[download] every shard finished but img2dataset did not exit after {FINISHED_GRACE_SECONDS:.0f} s; stopping it", file=log)
                proc.kill()
                proc.wait()
                return 0
        return proc.returncode
    finally:
        if proc.poll() is None:  # we are being interrupted: take the workers down with us
            proc.kill()
            proc.wait()


def shard_ids(n_rows: int, per_shard: int) -> list[int]:
    return list(range(math.ceil(n_rows / per_shard)))


def shard_stem(shard: int) -> str:
    return f"{shard:05d}"


def download_chunk(
    urls_path: str | Path,
    out_json: str | Path,
    *,
    dataset: str,
    chunk: str,
    options: dict,
    limits: dict,
    processes: int = 1,
    threads: int = 16,
    log=sys.stderr,
) -> dict:
    """Download ``urls_path`` into ``<chunk>/images`` and write the summary ``out_json``.

    Raises :class:`DownloadError` when shards are missing or the success rate is below
    ``options['min_success_rate']``; finished shards stay on disk for the rerun. ``options`` holds
    every key of the config's ``download:`` section (defaults in workflow/schemas/config.schema.yaml)
    but the parallelism (``processes``, ``threads`` per process); ``limits`` holds the filter's
    size limits when img2dataset resizes (it checks them on the original image).
    """
    urls_path, out_json = Path(urls_path), Path(out_json)
    opts = options
    chunk_dir = out_json.parent
    images_dir = chunk_dir / "images"
    settings_path = chunk_dir / "images.settings.json"
    args = img2dataset_args(urls_path, images_dir, opts, limits, processes, threads)
    settings = {
        "urls_sha256": _file_sha256(urls_path),
        "img2dataset": {k: v for k, v in args.items() if k not in ("url_list", "output_folder", "processes_count", "thread_count")},
    }
    if images_dir.exists():
        previous = read_json(settings_path) if settings_path.exists() else None
        if previous != settings:
            print(f"[download] {dataset}/{chunk}: URL table or download options changed; removing {images_dir}", file=log)
            shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, settings)

    n_rows = pq.ParquetFile(urls_path).metadata.num_rows
    shards = shard_ids(n_rows, int(opts["number_sample_per_shard"]))
    if n_rows:
        args_path = chunk_dir / "img2dataset.args.json"
        write_json(args_path, args)
        log.flush()
        returncode = _run_img2dataset(args_path, images_dir, shards, log)
        if returncode != 0:
            raise DownloadError(
                f"{dataset}/{chunk}: img2dataset exited with code {returncode}; see the job log. "
                "Finished shards are kept; rerun to resume."
            )
    summary = summarize_chunk(images_dir, shards, dataset=dataset, chunk=chunk)
    summary["urls"] = n_rows
    rate = summary["downloaded"] / n_rows if n_rows else 1.0
    summary["success_rate"] = round(rate, 6)
    if rate < float(opts["min_success_rate"]):
        top = Counter(summary["failed"]).most_common(5)
        raise DownloadError(
            f"{dataset}/{chunk}: only {summary['downloaded']} of {n_rows} URLs downloaded "
            f"({rate:.1%} < min_success_rate {float(opts['min_success_rate']):.0%}); most common failures: {top}. "
            f"Per-URL errors are in {images_dir}/*.parquet. Shards are kept: fix the cause (or lower "
            "download.min_success_rate) and rerun."
        )
    write_json(out_json, summary)
    return summary


def summarize_chunk(images_dir: Path, shards: list[int], *, dataset: str, chunk: str) -> dict:
    """Check that every expected shard finished and count successes and failures by reason."""
    failed: Counter = Counter()
    errors: dict[str, str] = {}
    downloaded = 0
    finished = []
    for s in shards:
        stem = shard_stem(s)
        missing = [p for p in (f"{stem}_stats.json", f"{stem}.tar", f"{stem}.parquet") if not (images_dir / p).exists()]
        if missing:
            raise DownloadError(
                f"{dataset}/{chunk}: img2dataset left shard {stem} unfinished (missing {missing} in {images_dir}); "
                "rerun to retry the missing shards."
            )
        meta = pd.read_parquet(images_dir / f"{stem}.parquet", columns=["status", "error_message"])
        ok = meta["status"] == "success"
        downloaded += int(ok.sum())
        for msg in meta.loc[~ok, "error_message"].fillna("unknown error"):
            reason = download_reason(msg)
            failed[reason] += 1
            errors.setdefault(reason, msg)
        finished.append(stem)
    return {
        "dataset": dataset,
        "chunk": chunk,
        "shards": finished,
        "downloaded": downloaded,
        "failed": dict(sorted(failed.items())),
        "example_errors": errors,
    }

