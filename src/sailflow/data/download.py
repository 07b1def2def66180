"""Download one chunk of a URL table with img2dataset (webdataset shards), resumably, retrying failures.

Layout of a chunk folder::

    chunks/{chunk}/urls.parquet          input (sample_id, url, captions)
    chunks/{chunk}/images/               img2dataset output: NNNNN.tar, NNNNN.parquet, NNNNN_stats.json
    chunks/{chunk}/images/urls.parquet   what img2dataset reads: sample_id, url as a browser sends it
    chunks/{chunk}/images/retryK/        retry round K (1, 2, ...): its urls.parquet and its shards
    chunks/{chunk}/images.settings.json  what the images were downloaded with (url table hash, options)
    chunks/{chunk}/img2dataset[.retryK].args.json   the arguments of the last img2dataset run of each round
    chunks/{chunk}/download.json         written last, atomically: the job's declared output

``images/`` is not a declared Snakemake output on purpose: Snakemake deletes declared outputs before
a rerun, which would throw away every finished shard of a killed job. img2dataset's incremental mode
redoes exactly the shards without a ``_stats.json`` (the file it writes last). If the URL table or
a download option changed, the folder is wiped first, since incremental mode cannot tell.

Retries. img2dataset writes ``_stats.json`` even for a shard whose every URL failed, so incremental
mode alone would never ask for a failed URL again, not even after the server is fixed. A job
therefore runs up to two passes:

1. the main pass: img2dataset (incremental) over ``images/urls.parquet``, finishing the shards an
   earlier, killed job left unfinished (a first run does everything here);
2. one retry pass. If an earlier job left retry round K unfinished (it was killed), round K is
   resumed the same way. Otherwise the URLs that failed in shards finished by an *earlier* job, and
   have not succeeded since, get a new round ``images/retry{K+1}/`` with its own ``urls.parquet``
   (fixed once written, so a killed round resumes exactly). Only network-type failures are retried
   (img2dataset status ``failed_to_download``: HTTP errors, timeouts, refused connections); an
   X-Robots-Tag refusal and content failures (too small, undecodable, aspect ratio, too many
   pixels: status ``failed_to_resize``) would fail the same way again.

Finished shards, of any round, are never touched again. A sample counts as downloaded if any attempt
succeeded (only failures are retried, so at most one did); a failed sample's reason is that of its
latest attempt. ``download.json`` lists every shard as a path relative to ``images/`` without
suffix (``00003``, ``retry1/00000``); later stages read ``images/<shard>.tar``.

URLs are handed to img2dataset percent-encoded as a browser would send them (:func:`browser_url`):
Python's HTTP client refuses a space or a non-ASCII character. The chunk's ``urls.parquet``, and so
``samples.parquet``, keep the URL as the source table wrote it.
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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sailflow.io import atomic_path, read_json, write_json


class DownloadError(RuntimeError):
    """A chunk did not download well enough; the message says which chunk and why."""


_HTTP = re.compile(r"HTTP Error (\d+)")
_IMG2DATASET_REASONS = {
    "image too small": "too_small",
    "image area too large": "too_many_pixels",
    "aspect ratio too large": "bad_aspect_ratio",
    "Image decoding error": "undecodable",
}
# Failures that a new attempt cannot change: the server's X-Robots-Tag refusal, a hash mismatch.
_FINAL_DOWNLOAD_REASONS = {"robots_disallowed", "hash_mismatch"}


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
    if low == "hash mismatch":
        return "hash_mismatch"
    return "download_error"


# ---- URLs as a browser sends them -----------------------------------------------------------------

# What a browser percent-encodes (WHATWG URL standard: the path and query percent-encode sets): C0
# controls, space, DEL, non-ASCII, and " < > (+ ` { } in the path). Reserved characters stay, and so
# do existing %XX escapes; a % that starts no escape becomes %25 (browsers send it bare, and servers
# then answer 400).
_PATH_ENCODE = re.compile(r'[^\x21-\x7e]|["<>`{}]|%(?![0-9A-Fa-f]{2})')
_QUERY_ENCODE = re.compile(r'[^\x21-\x7e]|["<>]|%(?![0-9A-Fa-f]{2})')
_URL_PARTS = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:)(?://(?P<authority>[^/?#]*))?(?P<path>[^?#]*)(?P<rest>.*)$", re.S)


def _percent(m: re.Match) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass"))


def _browser_authority(authority: str) -> str:
    """user:pass@host:port with a non-ASCII host in IDNA (``bücher.example`` -> ``xn--bcher-kva.example``)."""
    if authority.isascii():
        return _PATH_ENCODE.sub(_percent, authority)
    userinfo, at, hostport = authority.rpartition("@")
    host, port = hostport, ""
    if not hostport.startswith("["):  # not an IPv6 literal
        h, colon, p = hostport.rpartition(":")
        if colon and (p.isdigit() or not p):
            host, port = h, colon + p
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:  # not a valid international name: left as it is, the download reports it
        pass
    return _PATH_ENCODE.sub(_percent, userinfo) + at + _PATH_ENCODE.sub(_percent, host) + port


def browser_url(url: str) -> str:
    """``url`` as a browser would request it: IDNA host, UTF-8 percent-encoding of what HTTP forbids.

    Tabs and newlines are removed (as browsers do); an ASCII URL without spaces comes back unchanged.
    """
    url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    m = _URL_PARTS.match(url)
    if m is None:  # no scheme: not a URL img2dataset can fetch either way
        return _QUERY_ENCODE.sub(_percent, url)
    authority = m.group("authority")
    rest = m.group("rest")  # ?query#fragment, each part with its delimiter
    query, hash_, fragment = rest.partition("#")
    return (
        m.group("scheme")
        + ("" if authority is None else "//" + _browser_authority(authority))
        + _PATH_ENCODE.sub(_percent, m.group("path"))
        + _QUERY_ENCODE.sub(_percent, query)
        + hash_
        + _QUERY_ENCODE.sub(_percent, fragment)
    )


# ---- img2dataset ----------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def img2dataset_args(urls_path: Path, images_dir: Path, opts: dict, limits: dict, processes: int, threads: int) -> dict:
    """The keyword arguments for ``img2dataset.download`` for one chunk (or one retry round)."""
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


def _run_img2dataset(args_path: Path, out_dir: Path, stems: list[str], log) -> int:
    """Run the launcher; stop it if it lingers ``FINISHED_GRACE_SECONDS`` after every shard finished."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sailflow.data.img2dataset_main", str(args_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    expected = [out_dir / f"{stem}_stats.json" for stem in stems]
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


_SHARD_FILES = ("{}_stats.json", "{}.tar", "{}.parquet")  # _stats.json last: img2dataset writes it when done


@dataclass
class _Round:
    """One img2dataset pass: the main one (``images/``) or retry round K (``images/retryK/``)."""

    folder: Path  # img2dataset's output folder; its url list is folder/urls.parquet
    prefix: str  # "" or "retryK/": a shard's path relative to images/ is prefix + stem
    n_urls: int
    per_shard: int

    @property
    def urls(self) -> Path:
        return self.folder / "urls.parquet"

    @property
    def stems(self) -> list[str]:
        return [shard_stem(s) for s in shard_ids(self.n_urls, self.per_shard)]

    def finished(self, stem: str) -> bool:
        return all((self.folder / p.format(stem)).exists() for p in _SHARD_FILES)

    def unfinished(self) -> list[str]:
        return [s for s in self.stems if not self.finished(s)]


def _write_url_list(path: Path, sample_ids, urls) -> None:
    table = pa.table({"sample_id": pa.array(sample_ids, pa.int64()), "url": pa.array([browser_url(u) for u in urls], pa.string())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _retry_rounds(images_dir: Path, per_shard: int, log) -> list[_Round]:
    """The retry rounds earlier jobs started, in order; a folder whose url list never appeared is removed."""
    rounds = []
    found = sorted(
        (int(p.name[5:]), p) for p in images_dir.glob("retry*") if p.is_dir() and p.name[5:].isdigit()
    )
    for k, folder in found:
        if k != len(rounds) + 1 or not (folder / "urls.parquet").exists():
            print(f"[download] removing {folder}: an incomplete retry round", file=log)
            shutil.rmtree(folder)
            continue
        rounds.append(_Round(folder, f"retry{k}/", pq.ParquetFile(folder / "urls.parquet").metadata.num_rows, per_shard))
    return rounds


def _read_attempts(rnd: _Round, stems: list[str]) -> pd.DataFrame:
    """sample_id, status, error_message of every URL of the given (finished) shards of a round."""
    frames = [pd.read_parquet(rnd.folder / f"{stem}.parquet", columns=["sample_id", "status", "error_message"]) for stem in stems]
    if not frames:
        return pd.DataFrame({"sample_id": pd.Series(dtype="int64"), "status": pd.Series(dtype="object"), "error_message": pd.Series(dtype="object")})
    return pd.concat(frames, ignore_index=True)


def _to_retry(attempts: pd.DataFrame) -> pd.Index:
    """sample_ids that never succeeded and whose latest attempt failed in a way a new attempt can fix."""
    ok = attempts.loc[attempts["status"] == "success", "sample_id"]
    last = attempts.drop_duplicates("sample_id", keep="last")
    last = last[~last["sample_id"].isin(ok)]
    reasons = last["error_message"].fillna("unknown error").map(download_reason)
    retry = (last["status"] == "failed_to_download") & ~reasons.isin(_FINAL_DOWNLOAD_REASONS)
    return pd.Index(last.loc[retry, "sample_id"].astype("int64"))


def download_chunk(
    urls_path: str | Path,
    out_json: str | Path,
    *,
    dataset: str,
    chunk: str,
    options: dict,
    limits: dict,
    min_success_rate: float | None = None,
    processes: int = 1,
    threads: int = 16,
    log=sys.stderr,
) -> dict:
    """Download ``urls_path`` into ``<chunk>/images`` and write the summary ``out_json``.

    Raises :class:`DownloadError` when shards are missing or the success rate is below
    ``min_success_rate`` (when None: ``options['min_success_rate']``, else 0); finished shards stay on
    disk for the rerun, which also retries the failed URLs (see the module docstring). ``options``
    holds the keys of the config's ``download:`` section (defaults in
    workflow/schemas/config.schema.yaml) but the parallelism (``processes``, ``threads`` per process);
    ``limits`` holds the filter's size limits when img2dataset resizes (it checks them on the
    original image).

    ``out_json``: dataset, chunk, shards (paths relative to images/, no suffix), downloaded, failed
    (reason -> count, each failed URL once), example_errors (reason -> one message), urls,
    success_rate, retries (one entry per retry round: round ("retry1", ...), urls, downloaded).
    """
    urls_path, out_json = Path(urls_path), Path(out_json)
    if min_success_rate is None:
        min_success_rate = options.get("min_success_rate", 0.0)
    min_success_rate = float(min_success_rate)
    # the gate is not a download option: changing it must not wipe the images (see images.settings.json)
    opts = {k: v for k, v in options.items() if k != "min_success_rate"}
    chunk_dir = out_json.parent
    images_dir = chunk_dir / "images"
    settings_path = chunk_dir / "images.settings.json"
    args = img2dataset_args(images_dir / "urls.parquet", images_dir, opts, limits, processes, threads)
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

    table = pq.read_table(urls_path, columns=["sample_id", "url"])
    per_shard = int(opts["number_sample_per_shard"])
    main = _Round(images_dir, "", table.num_rows, per_shard)
    if not main.urls.exists():
        _write_url_list(main.urls, table.column("sample_id").to_pylist(), table.column("url").to_pylist())
    finished_before = [s for s in main.stems if main.finished(s)]  # by earlier jobs
    rounds = _retry_rounds(images_dir, per_shard, log)

    def run(rnd: _Round, what: str) -> None:
        name = "img2dataset" + (f".{rnd.prefix.rstrip('/')}" if rnd.prefix else "")
        args_path = chunk_dir / f"{name}.args.json"
        write_json(args_path, {**args, "url_list": str(rnd.urls), "output_folder": str(rnd.folder)})
        print(f"[download] {dataset}/{chunk}: {what}", file=log)
        log.flush()
        returncode = _run_img2dataset(args_path, rnd.folder, rnd.stems, log)
        if returncode != 0:
            raise DownloadError(
                f"{dataset}/{chunk}: img2dataset exited with code {returncode} ({what}); see the job log. "
                "Finished shards are kept; rerun to resume."
            )

    todo = main.unfinished()
    if todo:
        run(main, f"{len(todo)} of {len(main.stems)} shards to download into {images_dir}")
    if rounds and rounds[-1].unfinished():
        last = rounds[-1]
        run(last, f"resuming retry round {last.folder} ({last.n_urls} URLs that had failed)")
    else:
        earlier = [_read_attempts(main, finished_before)] + [_read_attempts(r, r.stems) for r in rounds]
        retry_ids = _to_retry(pd.concat(earlier, ignore_index=True))
        if len(retry_ids):
            k = len(rounds) + 1
            rnd = _Round(images_dir / f"retry{k}", f"retry{k}/", len(retry_ids), per_shard)
            main_list = pq.read_table(main.urls).to_pandas().set_index("sample_id")
            rnd.folder.mkdir()
            # already encoded: the main list holds browser_url()s, which browser_url leaves unchanged
            _write_url_list(rnd.urls, retry_ids.tolist(), main_list.loc[retry_ids, "url"].tolist())
            rounds.append(rnd)
            run(rnd, f"retrying {len(retry_ids)} URLs that failed in an earlier run, into {rnd.folder}")

    summary = summarize_chunk(main, rounds, table.column("sample_id").to_numpy(), dataset=dataset, chunk=chunk)
    n_rows = table.num_rows
    rate = summary["downloaded"] / n_rows if n_rows else 1.0
    summary["success_rate"] = round(rate, 6)
    if rate < min_success_rate:
        top = Counter(summary["failed"]).most_common(5)
        raise DownloadError(
            f"{dataset}/{chunk}: only {summary['downloaded']} of {n_rows} URLs downloaded "
            f"({rate:.1%} < min_success_rate {min_success_rate:.0%}); most common failures: {top}. "
            f"Per-URL errors are in {images_dir}/NNNNN.parquet (and retry*/NNNNN.parquet). Shards are kept: "
            "fix the cause (or lower download.min_success_rate) and rerun; the rerun retries the failed URLs."
        )
    write_json(out_json, summary)
    return summary


def summarize_chunk(main: _Round, rounds: list[_Round], sample_ids, *, dataset: str, chunk: str) -> dict:
    """Check that every shard of every round finished; count each URL once, by its latest attempt."""
    shards = []
    for rnd in [main, *rounds]:
        missing = rnd.unfinished()
        if missing:
            raise DownloadError(
                f"{dataset}/{chunk}: img2dataset left shard(s) {[rnd.prefix + s for s in missing]} unfinished in "
                f"{rnd.folder}; rerun to retry the missing shards."
            )
        shards += [rnd.prefix + s for s in rnd.stems]
    per_round = [_read_attempts(rnd, rnd.stems) for rnd in [main, *rounds]]
    attempts = pd.concat(per_round, ignore_index=True)
    ok = attempts["status"] == "success"
    downloaded_ids = set(attempts.loc[ok, "sample_id"].tolist())
    last = attempts.drop_duplicates("sample_id", keep="last")
    failed_last = last[~last["sample_id"].isin(downloaded_ids)]
    unrecorded = len(set(pd.Series(sample_ids).tolist()) - set(last["sample_id"].tolist()))
    failed: Counter = Counter()
    errors: dict[str, str] = {}
    for msg in failed_last["error_message"].fillna("unknown error"):
        reason = download_reason(msg)
        failed[reason] += 1
        errors.setdefault(reason, msg)
    if unrecorded:  # img2dataset lost a row (an exception inside its writer): counted, never silently
        failed["download_error"] += unrecorded
        errors.setdefault("download_error", "img2dataset wrote no record for this URL")
    retries = [
        {"round": rnd.prefix.rstrip("/"), "urls": rnd.n_urls, "downloaded": int((a["status"] == "success").sum())}
        for rnd, a in zip(rounds, per_round[1:])
    ]
    return {
        "dataset": dataset,
        "chunk": chunk,
        "shards": shards,
        "downloaded": len(downloaded_ids),
        "failed": dict(sorted(failed.items())),
        "example_errors": errors,
        "urls": len(sample_ids),
        "retries": retries,
    }
