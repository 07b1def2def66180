"""Cleanup: the final per-chunk sample tables and the dataset manifest.

``chunks/{chunk}/samples.parquet`` holds, sorted by sample_id (the order every later stage reads):

    sample_id, key, shard, offset, size, width, height, url, <caption sources...>

Row k of every embedding file of the chunk is row k of this table. Exact duplicate images (same
stored bytes) are dropped across the whole dataset, keeping the first by (chunk, sample_id).

``manifest.json`` counts every source row exactly once: ``input_rows == kept + sum(dropped)``, and
lists the source lines of the first unreadable rows (``bad_rows``, from the normalize stage).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from sailflow.io import read_json, write_json, write_parquet


class ManifestError(RuntimeError):
    pass


def cleanup_dataset(
    *,
    dataset: str,
    caption_sources: list[str],
    normalize_report: dict,
    chunks: list[str],
    chunk_urls: list[str | Path],
    downloads: list[str | Path],
    filtered: list[str | Path],
    filter_reports: list[str | Path],
    out_samples: list[str | Path],
    out_manifest: str | Path,
) -> dict:
    """Join the filtered images of each chunk with their captions; write samples and manifest."""
    seen_hashes: set[str] = set()
    stage = {"normalize": Counter(normalize_report["dropped"]), "download": Counter(), "filter": Counter(), "cleanup": Counter()}
    per_chunk = {}
    empty = Counter({c: 0 for c in caption_sources})
    kept_total = 0
    rows = zip(chunks, chunk_urls, downloads, filtered, filter_reports, out_samples)
    for chunk, urls_p, dl_p, filt_p, frep_p, out_p in tqdm(rows, total=len(chunks), desc=f"{dataset} chunks", unit="chunk", mininterval=10):
        dl, frep = read_json(dl_p), read_json(frep_p)
        urls = pd.read_parquet(urls_p)
        images = pd.read_parquet(filt_p)
        dup = images["sha256"].isin(seen_hashes) | images["sha256"].duplicated(keep="first")
        seen_hashes.update(images.loc[~dup, "sha256"])
        images = images.loc[~dup]
        samples = images.merge(urls, on="sample_id", how="left", validate="one_to_one", indicator=True)
        if (samples["_merge"] != "both").any():
            bad = samples.loc[samples["_merge"] != "both", "sample_id"].head(5).tolist()
            raise ManifestError(f"{dataset}/{chunk}: downloaded sample_ids {bad} are not in {urls_p}")
        samples = samples.drop(columns=["_merge", "sha256"]).sort_values("sample_id", kind="stable")
        samples = samples[["sample_id", "key", "shard", "offset", "size", "width", "height", "url", *caption_sources]]
        write_parquet(out_p, samples.reset_index(drop=True))

        dropped = Counter(dl["failed"]) + Counter(frep["dropped"])
        if int(dup.sum()):
            dropped["duplicate_content"] += int(dup.sum())
        stage["download"].update(dl["failed"])
        stage["filter"].update(frep["dropped"])
        stage["cleanup"]["duplicate_content"] += int(dup.sum())
        if len(samples) + sum(dropped.values()) != len(urls):
            raise ManifestError(
                f"{dataset}/{chunk}: {len(urls)} URLs but {len(samples)} kept + {sum(dropped.values())} dropped"
            )
        for c in caption_sources:
            empty[c] += int(samples[c].isna().sum())
        kept_total += len(samples)
        per_chunk[chunk] = {
            "urls": len(urls),
            "downloaded": dl["downloaded"],
            "kept": len(samples),
            "dropped": dict(sorted(dropped.items())),
        }
    stage["cleanup"] = +stage["cleanup"]
    total_dropped = sum((c for c in stage.values()), Counter())
    manifest = {
        "dataset": dataset,
        "caption_sources": list(caption_sources),
        "input_rows": normalize_report["input_rows"],
        "urls": normalize_report["kept_rows"],
        "downloaded": sum(c["downloaded"] for c in per_chunk.values()),
        "kept": kept_total,
        "dropped": dict(sorted(total_dropped.items())),
        "dropped_by_stage": {k: dict(sorted(v.items())) for k, v in stage.items()},
        "empty_captions": dict(empty),
        "bad_rows": list(normalize_report.get("bad_rows", [])),
        "chunks": per_chunk,
    }
    if manifest["kept"] + sum(total_dropped.values()) != manifest["input_rows"]:
        raise ManifestError(f"{dataset}: counts do not add up: {manifest}")
    write_json(out_manifest, manifest)
    return manifest
