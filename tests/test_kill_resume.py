"""kill -9 a download job mid-chunk, rerun: same result as an uninterrupted run, and no partial
shard is taken as finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from conftest import REPO, noisy_jpeg, snakemake, write_config
from imageserver import serve
from sailflow.data.shards import read_sample_bytes

pytestmark = pytest.mark.e2e

N = 48


def _setup(workdir: Path, base: str) -> None:
    rows = [(f"{base}/slow/img{i}", f"caption of img{i}") for i in range(N)]
    pd.DataFrame(rows, columns=["url", "caption"]).to_csv(workdir / "web.csv", index=False)
    cfg = {
        "default_targets": ["results/data/web/manifest.json"],
        "datasets": {
            "web": {
                "source": str(workdir / "web.csv"),
                "caption_sources": ["caption"],
                "n_chunks": 1,
                "download": {"processes": 1, "threads": 2, "timeout": 5, "retries": 0, "number_sample_per_shard": 4, "min_success_rate": 1.0},
                "filter": {"min_side": 16, "processes": 1},
            }
        },
    }
    write_config(workdir, cfg)


def _samples(workdir: Path) -> pd.DataFrame:
    return pd.read_parquet(workdir / "results/data/web/chunks/0000/samples.parquet")


def _kill_tree(pid: int) -> None:
    parent = psutil.Process(pid)
    procs = parent.children(recursive=True) + [parent]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def test_kill_mid_chunk_then_rerun_equals_uninterrupted(tmp_path):
    files = {f"img{i}": noisy_jpeg(1000 + i) for i in range(N)}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir(), killed.mkdir()
    with serve(files, delay_seconds=0.15) as base:
        _setup(ref, base)
        snakemake(ref, "--cores", "2")
        _setup(killed, base)

        images = killed / "results/data/web/chunks/0000/images"
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(killed), "--cores", "2"]
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.time() + 300  # generous: a busy machine starts the job slowly
        while time.time() < deadline and len(list(images.glob("*_stats.json"))) < 3:
            time.sleep(0.05)
        done_before = sorted(images.glob("*_stats.json"))
        _kill_tree(proc.pid)  # the whole job tree, as a scheduler or the OOM killer would
        assert 3 <= len(done_before) < N // 4, "the kill did not land mid-chunk"
        assert not (images.parent / "download.json").exists()
        # nothing of the killed job keeps running (img2dataset's workers die with their parent)
        time.sleep(0.5)
        stray = [p.info for p in psutil.process_iter(["pid", "cwd", "cmdline"]) if str(p.info["cwd"] or "").startswith(str(killed))]
        assert not stray, stray
        finished_mtime = {p.name: p.stat().st_mtime_ns for p in done_before}

        snakemake(killed, "--unlock")
        snakemake(killed, "--cores", "2")

    # finished shards were resumed, not redone; unfinished ones were redone
    for name, mtime in finished_mtime.items():
        assert (images / name).stat().st_mtime_ns == mtime
    a, b = _samples(ref), _samples(killed)
    assert len(a) == N
    cols = ["sample_id", "key", "shard", "size", "width", "height", "url", "caption"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    for (ra, rb) in zip(a.itertuples(), b.itertuples()):
        da = read_sample_bytes(ref / "results/data/web/chunks/0000/images", ra.shard, ra.offset, ra.size)
        db = read_sample_bytes(images, rb.shard, rb.offset, rb.size)
        assert da == db == files[ra.url.rsplit("/", 1)[-1]]
    # no temporary or partial file is left looking finished
    leftovers = [p for p in (killed / "results").rglob("*") if ".tmp-" in p.name or ".stage-" in p.name]
    assert not leftovers
