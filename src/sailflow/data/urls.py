"""Normalise a URL + caption table and split it into chunks.

Input tables are either DreamLIP CSVs (8 columns, ``Image Path`` holds the URL, quoted multi-line
captions) or any CSV/TSV/parquet with a URL column and named caption columns. Output
``urls.parquet`` has one row per kept sample:

    sample_id (int64, 0-based data-row index in the source: stable across reruns)
    url (str)
    <caption_source> (str or null), one column per configured caption source

Rows are streamed in batches, so memory does not grow with the table beyond the URL hashes
(8 bytes per row) needed to find duplicates.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sailflow.io import atomic_path

DREAMLIP_COLUMNS = [
    "Image Path",
    "raw_caption",
    "shortIB_captions",
    "longIB_captions",
    "shortSV_captions",
    "longSV_captions",
    "shortLLA_captions",
    "longLLA_captions",
]
DREAMLIP_URL_COLUMN = "Image Path"

# Caption strings that are really missing values written out by pandas or spreadsheets.
_MISSING_CAPTIONS = {"", "nan", "none", "null", "na", "n/a"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

BATCH_ROWS = 65536


class TableError(ValueError):
    """The source table or its config entry is unusable; the message says what and where."""


@dataclass
class NormalizeReport:
    """Counts of one normalisation pass. ``dropped`` maps a reason to its row count."""

    input_rows: int = 0
    kept_rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    empty_captions: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "input_rows": self.input_rows,
            "kept_rows": self.kept_rows,
            "dropped": dict(sorted(self.dropped.items())),
            "empty_captions": dict(sorted(self.empty_captions.items())),
        }


def caption_columns(caption_sources: list[str] | dict[str, str]) -> dict[str, str]:
    """Map caption-source name -> column name (a list means name == column)."""
    if isinstance(caption_sources, dict):
        return dict(caption_sources)
    return {c: c for c in caption_sources}


def _detect_kind(path: Path, fmt: str | None) -> str:
    name = path.name.lower()
    if fmt == "dreamlip":
        return "csv"
    for suffix, kind in ((".parquet", "parquet"), (".tsv", "tsv"), (".tsv.gz", "tsv"), (".csv", "csv"), (".csv.gz", "csv")):
        if name.endswith(suffix):
            return kind
    raise TableError(f"{path}: unknown table type; expected .csv, .tsv (optionally .gz) or .parquet")


def _open_batches(path: Path, kind: str, columns: list[str]):
    """Yield pyarrow RecordBatches with exactly ``columns`` as strings; clear error if one is missing."""
    if kind == "parquet":
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        _check_columns(path, names, columns)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield pa.RecordBatch.from_arrays(
                [batch.column(c).cast(pa.string()) for c in columns], names=columns
            )
        return
    parse = _csv_parse_options(kind)
    read = pacsv.ReadOptions(block_size=1 << 24)
    names = _peek_columns(path, kind)
    _check_columns(path, names, columns)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in names},
        include_columns=columns,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    with pa.input_stream(str(path), compression="detect") as stream:
        try:
            reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                yield batch
        except pa.ArrowInvalid as e:  # malformed CSV: say which file
            raise TableError(f"{path}: cannot parse as {kind.upper()}: {e}") from None


def _check_columns(path: Path, names: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise TableError(
            f"{path}: missing required column(s) {missing}; the file has columns {names}. "
            "Check url_column / caption_sources of this dataset in config/config.yaml."
        )


def _clean_captions(values: pd.Series) -> pd.Series:
    s = values.astype("object").where(values.notna(), None)
    stripped = s.map(lambda v: v.strip() if isinstance(v, str) else None)
    missing = stripped.map(lambda v: v is None or v.lower() in _MISSING_CAPTIONS)
    return stripped.where(~missing, None)


def _classify_urls(urls: pd.Series, allow_local: bool, base_dir: Path) -> tuple[pd.Series, pd.Series]:
    """Return (normalised url, drop reason or None) per row."""
    out_urls, reasons = [], []
    for u in urls:
        u = u.strip() if isinstance(u, str) else ""
        if not u or u.lower() in _MISSING_CAPTIONS:
            out_urls.append(None)
            reasons.append("empty_url")
            continue
        m = _SCHEME.match(u)
        scheme = m.group(1).lower() if m else ""
        if scheme in ("http", "https"):
            reasons.append(None)
        elif scheme == "file" or (allow_local and not scheme):
            if not allow_local:
                reasons.append("local_url")
            else:
                if not scheme:  # a plain path: resolve against the table's folder
                    u = (base_dir / u).resolve().as_uri()
                reasons.append(None)
        else:
            reasons.append("bad_scheme")
        out_urls.append(u)
    return pd.Series(out_urls, index=urls.index, dtype="object"), pd.Series(reasons, index=urls.index, dtype="object")


def _url_hash(urls: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(urls, index=False).to_numpy(dtype=np.uint64)


def normalize_table(
    source: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    dataset: str,
    url_column: str,
    caption_sources: list[str] | dict[str, str],
    fmt: str | None = None,
    allow_local_urls: bool = False,
) -> NormalizeReport:
    """Normalise ``source`` into ``out_path`` (parquet); return the counts.

    Drop reasons, each row counted once, checked in this order: ``empty_url``, ``bad_scheme``
    (anything but http/https, or file:// when local URLs are allowed), ``no_caption`` (every caption
    source empty), ``duplicate_url`` (the first occurrence is kept). Local (file://) URLs without
    ``allow_local_urls`` stop the job with an error, since they read files from this machine.
    """
    source = Path(source)
    if not source.exists():
        raise TableError(f"{source}: source table not found (dataset {dataset!r})")
    captions = caption_columns(caption_sources)
    if not captions:
        raise TableError(f"dataset {dataset!r}: caption_sources is empty")
    kind = _detect_kind(source, fmt)
    if fmt == "dreamlip":
        _check_columns(source, _peek_columns(source, kind), DREAMLIP_COLUMNS)
    columns = [url_column, *dict.fromkeys(captions.values())]
    report = NormalizeReport()
    schema = pa.schema(
        [("sample_id", pa.int64()), ("url", pa.string())] + [(name, pa.string()) for name in captions]
    )
    out_path = Path(out_path)
    staged = out_path.with_name(f".{out_path.name}.stage-{os.getpid()}")
    hashes = []
    first_local: tuple[int, str] | None = None
    try:
        with pq.ParquetWriter(staged, schema) as writer:
            row0 = 0
            for batch in _open_batches(source, kind, columns):
                df = batch.to_pandas()
                n = len(df)
                ids = np.arange(row0, row0 + n, dtype=np.int64)
                row0 += n
                report.input_rows += n
                urls, reasons = _classify_urls(df[url_column], allow_local_urls, source.parent)
                local = reasons == "local_url"
                if local.any() and first_local is None:
                    i = int(np.flatnonzero(local.to_numpy())[0])
                    first_local = (int(ids[i]), urls.iloc[i])
                caps = {name: _clean_captions(df[col]) for name, col in captions.items()}
                has_caption = np.zeros(n, dtype=bool)
                for c in caps.values():
                    has_caption |= c.notna().to_numpy()
                reasons = reasons.where(reasons.notna() | has_caption, "no_caption")
                report.dropped.update(reasons.dropna().tolist())
                keep = reasons.isna().to_numpy()
                out = pd.DataFrame({"sample_id": ids[keep], "url": urls[keep].to_numpy()})
                for name, c in caps.items():
                    out[name] = c[keep].to_numpy()
                hashes.append(_url_hash(out["url"]))
                writer.write_table(pa.Table.from_pandas(out, schema=schema, preserve_index=False))
        if first_local is not None:
            row, url = first_local
            raise TableError(
                f"{source}: {report.dropped['local_url']} row(s) have local file URLs (first: data row {row}, "
                f"{url!r}). Local files are read only when the dataset opts in: set "
                f"datasets.{dataset}.allow_local_urls: true in config/config.yaml."
            )
        h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        dup = _duplicate_mask(staged, h)
        report.dropped["duplicate_url"] += int(dup.sum())
        with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            offset = 0
            for batch in pq.ParquetFile(staged).iter_batches(batch_size=BATCH_ROWS):
                t = pa.Table.from_batches([batch])
                keep = ~dup[offset : offset + len(t)]
                offset += len(t)
                t = t.filter(pa.array(keep))
                for name in captions:
                    report.empty_captions[name] += t.column(name).null_count
                report.kept_rows += len(t)
                writer.write_table(t)
    finally:
        staged.unlink(missing_ok=True)
    for name in captions:
        report.empty_captions.setdefault(name, 0)
    return report


def _peek_columns(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        return pq.ParquetFile(path).schema_arrow.names
    with pa.input_stream(str(path), compression="detect") as stream:
        reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=1 << 16), parse_options=_csv_parse_options(kind))
        return reader.schema.names


def _csv_parse_options(kind: str) -> pacsv.ParseOptions:
    # quoted captions may span lines (DreamLIP long captions)
    return pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True)


def _duplicate_mask(staged: Path, h: np.ndarray) -> np.ndarray:
    """True for every row whose URL already appeared in an earlier row (exact string compare)."""
    dup = np.zeros(len(h), dtype=bool)
    if len(h) == 0:
        return dup
    order = np.argsort(h, kind="stable")
    hs = h[order]
    same_as_prev = np.concatenate([[False], hs[1:] == hs[:-1]])
    candidates = np.zeros(len(h), dtype=bool)
    candidates[order[same_as_prev]] = True
    candidates[order[np.concatenate([same_as_prev[1:], [False]])]] = True
    if not candidates.any():
        return dup
    idx = np.flatnonzero(candidates)
    urls = pq.read_table(staged, columns=["url"]).column("url").take(pa.array(idx)).to_pandas()
    dup[idx[urls.duplicated(keep="first").to_numpy()]] = True
    return dup


def chunk_name(i: int) -> str:
    return f"{i:04d}"


def split_table(urls_path: str | os.PathLike, out_paths: list[str | os.PathLike]) -> list[int]:
    """Split ``urls_path`` into ``len(out_paths)`` contiguous chunks of near-equal size, in order.

    Returns the row count of each chunk. Chunks may be empty when there are fewer rows than chunks.
    """
    pf = pq.ParquetFile(urls_path)
    n = pf.metadata.num_rows
    k = len(out_paths)
    bounds = [n * i // k for i in range(k + 1)]
    counts = [bounds[i + 1] - bounds[i] for i in range(k)]
    batches = pf.iter_batches(batch_size=BATCH_ROWS)
    pending: pa.Table | None = None
    for i, out in enumerate(out_paths):
        need = counts[i]
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, pf.schema_arrow) as writer:
            while need > 0:
                if pending is None or len(pending) == 0:
                    pending = pa.Table.from_batches([next(batches)])
                take = pending.slice(0, need)
                pending = pending.slice(len(take))
                writer.write_table(take)
                need -= len(take)
            if counts[i] == 0:
                writer.write_table(pf.schema_arrow.empty_table())
    return counts
