"""Throughput of the download + filter stages against img2dataset alone, on one loopback list.

Serves N generated JPEGs from a loopback HTTP server (tests/imageserver.py), then in one run:
  (a) img2dataset's CLI alone on the URL list (webdataset output, same processes/threads);
  (b) our stages on the same list: download_chunk (img2dataset + shard checks + summary) and
      filter_chunk (full PIL decode, checks, hashing).
Prints one JSON line: images/s of each and ``overhead`` = our time / img2dataset's time.

    python benchmarks/download.py [--n 2000] [--processes 2] [--threads 32]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from imageserver import serve  # noqa: E402

from sailflow.data.download import download_chunk  # noqa: E402
from sailflow.data.filter import filter_chunk  # noqa: E402
from sailflow.data.images import ImageLimits  # noqa: E402


def make_images(n: int, side: int = 256) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    files = {}
    for i in range(n):
        a = np.roll(base, i, axis=1)  # distinct content, realistic JPEG decode cost
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        files[f"img{i}.jpg"] = buf.getvalue()
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--per-shard", type=int, default=500)
    args = ap.parse_args()
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    files = make_images(args.n)
    opts = {
        "resize_mode": "no", "image_size": 512, "resize_only_if_bigger": True, "encode_format": "jpg",
        "encode_quality": 95, "timeout": 10, "retries": 0, "number_sample_per_shard": args.per_shard,
        "min_success_rate": 0.99, "user_agent_token": None,
        "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"],
    }
    with tempfile.TemporaryDirectory() as tmp, serve(files) as base:
        tmp = Path(tmp)
        urls = tmp / "chunk" / "urls.parquet"
        urls.parent.mkdir()
        pd.DataFrame({"sample_id": np.arange(args.n), "url": [f"{base}/f/{k}" for k in files]}).to_parquet(urls, index=False)

        cli = shutil.which("img2dataset", path=str(Path(sys.executable).parent)) or "img2dataset"
        t = time.perf_counter()
        subprocess.run(
            [cli, "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
             "--output_format", "webdataset", "--output_folder", str(tmp / "alone"),
             "--processes_count", str(args.processes), "--thread_count", str(args.threads),
             "--number_sample_per_shard", str(args.per_shard), "--resize_mode", "no",
             "--disable_all_reencoding", "True", "--extract_exif", "False", "--retries", "0"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        t_alone = time.perf_counter() - t

        with open(os.devnull, "w") as log:
            t = time.perf_counter()
            summary = download_chunk(urls, tmp / "chunk" / "download.json", dataset="bench", chunk="0000",
                                     options=opts, limits={}, processes=args.processes, threads=args.threads, log=log)
            t_download = time.perf_counter() - t
            t = time.perf_counter()
            report = filter_chunk(summary, tmp / "chunk" / "images", tmp / "chunk" / "filtered.parquet",
                                  tmp / "chunk" / "filter.json", limits=ImageLimits(min_side=32), processes=args.processes)
            t_filter = time.perf_counter() - t
        assert report["kept"] == args.n, report
    ours = t_download + t_filter
    print(json.dumps({
        "benchmark": "download",
        "images": args.n,
        "processes": args.processes,
        "threads": args.threads,
        "img2dataset_alone_images_per_s": round(args.n / t_alone, 1),
        "ours_download_images_per_s": round(args.n / t_download, 1),
        "ours_filter_images_per_s": round(args.n / t_filter, 1),
        "ours_download_plus_filter_images_per_s": round(args.n / ours, 1),
        "download_overhead": round(t_download / t_alone, 3),
        "download_plus_filter_over_img2dataset": round(ours / t_alone, 3),
    }))


if __name__ == "__main__":
    main()
