"""Normalise a URL + caption table and split it into chunks.

Input tables are either DreamLIP CSVs (8 columns, ``Image Path`` holds the URL, quoted multi-line
captions) or any CSV/TSV/parquet with a URL column and named caption columns. Output
``urls.parquet`` has one row per kept sample:

    sample_id (int64, 0-based data-row index in the source: stable across reruns)
    url (str, as the table wrote it, whitespace-trimmed)
    <caption_source> (str or null), one column per configured caption source

Text tables (.csv/.tsv, optionally gzip-compressed, UTF-8) are read with Python's ``csv`` module,
one record at a time, so every row knows the physical line it starts on (1-based; the header is
line 1). CSV follows RFC 4180 quoting (a quoted field may span lines); TSV has no quoting at all:
one line is one row, quotes are text. Blank lines are skipped and are not rows. A row that cannot
be read (wrong field count, broken quoting, invalid UTF-8) still takes its ``sample_id`` and is
dropped as ``bad_row`` with its line number, or stops the job when the dataset sets
``on_bad_row: error``. Parquet tables are read with pyarrow.

Only empty cells (empty after stripping whitespace; null in parquet) are missing: a caption that
reads "None" or "N/A" is text.

Rows are streamed in batches, so memory does not grow with the table beyond the URL hashes
(8 bytes per row) needed to find duplicates.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sailflow import paths
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

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# What a URL cell of a real row looks like: used to tell a runaway quoted field from a caption line.
_URL_LIKE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://\S")
# Bytes that are not UTF-8 arrive as lone surrogates (errors="surrogateescape").
_NOT_UTF8 = re.compile("[\udc80-\udcff]")

BATCH_ROWS = 65536
# Longest field a text table may hold (characters): bounds the memory a runaway quoted field can take.
MAX_FIELD_CHARS = 1 << 22
# How many bad rows urls.json (and the manifest) list by line; all of them are counted.
BAD_ROWS_LISTED = 20
ON_BAD_ROW = ("drop", "error")


class TableError(ValueError):
    """The source table or its config entry is unusable; the message says what and where."""


@dataclass
class NormalizeReport:
    """Counts of one normalisation pass. ``dropped`` maps a reason to its row count."""

    input_rows: int = 0
    kept_rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    empty_captions: Counter = field(default_factory=Counter)
    # the first BAD_ROWS_LISTED bad rows: {"line": first physical line, "problem": what was wrong}
    bad_rows: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "input_rows": self.input_rows,
            "kept_rows": self.kept_rows,
            "dropped": dict(sorted(self.dropped.items())),
            "empty_captions": dict(sorted(self.empty_captions.items())),
            "bad_rows": list(self.bad_rows),
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


def _open_batches(path: Path, kind: str, columns: list[str], bad: "_BadRows"):
    """Yield ``(sample_ids, DataFrame)`` batches with exactly ``columns`` (str, or None for null).

    ``sample_ids`` (int64) are the 0-based data-row indices of the rows in the batch; bad rows of a
    text table are left out of the batches (and reported to ``bad``) but keep their index.
    """
    if kind == "parquet":
        pf = pq.ParquetFile(path)
        _check_columns(path, pf.schema_arrow.names, columns)
        row0 = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            df = pd.DataFrame({c: batch.column(c).cast(pa.string()).to_pandas() for c in columns})
            yield np.arange(row0, row0 + len(df), dtype=np.int64), df
            row0 += len(df)
        return
    yield from _text_batches(path, kind, columns, bad)


def _check_columns(path: Path, names: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise TableError(
            f"{path}: missing required column(s) {missing}; the file has columns {names}. "
            "Check url_column / caption_sources of this dataset in config/config.yaml."
        )


# ---- text tables (.csv/.tsv[.gz]) -------------------------------------------------------------------


class _BadRows:
    """Where bad rows of a text table go: counted in the report, or an error (``on_bad_row``)."""

    def __init__(self, path: Path, dataset: str, on_bad_row: str, report: "NormalizeReport"):
        self.path, self.dataset, self.on_bad_row, self.report = path, dataset, on_bad_row, report

    def __call__(self, line: int, problem: str) -> None:
        if self.on_bad_row == "error":
            raise TableError(
                f"{self.path}, line {line}: {problem}. Fix the row, or set datasets.{self.dataset}.on_bad_row: drop "
                "in config/config.yaml to count such rows as dropped (bad_row) and go on."
            )
        self.report.input_rows += 1
        self.report.dropped["bad_row"] += 1
        if len(self.report.bad_rows) < BAD_ROWS_LISTED:
            self.report.bad_rows.append({"line": line, "problem": problem})


class _QuoteRunaway(Exception):
    """A quoted field ran into a line that reads as a complete row of its own (raised to csv.reader)."""


class _Lines:
    """The physical lines of a text table, numbered from 1, handed to ``csv.reader`` one at a time.

    csv.reader asks for a line only when the record it is parsing needs one (no read-ahead), so the
    lines handed out since :meth:`start_record` are exactly the current record's. A quoted field
    legitimately spans lines (DreamLIP long captions); but when a continuation line reads, on its
    own, as a complete row (``is_row``), the quote was almost surely never closed: the line is held
    back for the next record and :class:`_QuoteRunaway` stops the current one, which would
    otherwise swallow every following row into one caption.
    """

    def __init__(self, f):
        self._f = f
        self._held: str | None = None
        self.number = 0  # lines handed out so far
        self.record_start = 1
        self.is_row = None  # set once the header is known (CSV only)

    def start_record(self) -> None:
        self.record_start = self.number + 1

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._held
        if line is None:
            line = next(self._f)
        else:
            self._held = None
        n = self.number
        if n >= self.record_start and self.is_row is not None and self.is_row(line):
            self._held = line
            raise _QuoteRunaway
        self.number = n + 1
        return line


def _open_text(path: Path):
    """The table as text lines: UTF-8 (a BOM is skipped), gzip recognised by its magic bytes."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    # undecodable bytes become lone surrogates, so the one row that holds them is reported, not the file
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _dialect(kind: str) -> dict:
    if kind == "tsv":  # no quoting convention: one physical line is one record
        return {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return {"delimiter": ",", "quotechar": '"', "doublequote": True, "strict": True}


def _read_header(reader, lines: _Lines, path: Path) -> list[str]:
    while True:
        lines.start_record()
        try:
            header = next(reader)
        except StopIteration:
            raise TableError(f"{path}: the table is empty (no header line)") from None
        except csv.Error as e:
            raise TableError(f"{path}, line {lines.record_start}: cannot read the header ({e})") from None
        if header:
            return [h.strip() for h in header]


def _text_columns(path: Path, kind: str) -> list[str]:
    with _open_text(path) as f:
        lines = _Lines(f)
        return _read_header(csv.reader(lines, **_dialect(kind)), lines, path)


def _text_batches(path: Path, kind: str, columns: list[str], bad: _BadRows):
    dialect = _dialect(kind)
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)
    with _open_text(path) as f:
        lines = _Lines(f)
        reader = csv.reader(lines, **dialect)
        names = _read_header(reader, lines, path)
        _check_columns(path, names, columns)
        n_fields = len(names)
        index = [names.index(c) for c in columns]
        pick = (lambda rec: (rec[index[0]],)) if len(index) == 1 else itemgetter(*index)
        if kind == "csv":
            url_i = index[0]

            def is_row(line: str) -> bool:
                # cheap tests first: this runs on every continuation line of every multi-line caption
                if "://" not in line or line.count(",") < n_fields - 1:
                    return False
                try:
                    rec = next(csv.reader((line,), **dialect))
                except (csv.Error, StopIteration):
                    return False
                return len(rec) == n_fields and bool(_URL_LIKE.match(rec[url_i]))

            lines.is_row = is_row

        sample_id = 0
        ids: list[int] = []
        rows: list[tuple] = []
        while True:
            lines.start_record()
            problem = None
            try:
                rec = next(reader)
            except StopIteration:
                break
            except _QuoteRunaway:
                problem = (
                    f"a quoted field opened on line {lines.record_start} runs into line {lines.number + 1}, which "
                    "reads as a row of its own: an unmatched quote? (read as one bad row"
                    + (f", lines {lines.record_start}-{lines.number})" if lines.number > lines.record_start else ")")
                )
            except csv.Error as e:
                end = lines.number
                problem = f"not valid CSV ({e})" + (f" (lines {lines.record_start}-{end})" if end > lines.record_start else "")
            if problem is not None:
                # a fresh reader: the old one may be stuck inside a quoted field
                reader = csv.reader(lines, **dialect)
                bad(lines.record_start, problem)
                sample_id += 1
                continue
            if not rec:  # a blank line is not a row
                continue
            if len(rec) != n_fields:
                bad(lines.record_start, f"{len(rec)} fields, expected {n_fields}")
                sample_id += 1
                continue
            values = pick(rec)
            if _NOT_UTF8.search("".join(values)):
                bad(lines.record_start, "not valid UTF-8")
                sample_id += 1
                continue
            ids.append(sample_id)
            rows.append(values)
            sample_id += 1
            if len(rows) >= BATCH_ROWS:
                yield _batch(ids, rows, columns)
                ids, rows = [], []
        if rows:
            yield _batch(ids, rows, columns)


def _batch(ids: list[int], rows: list[tuple], columns: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    data = list(zip(*rows))
    return np.asarray(ids, dtype=np.int64), pd.DataFrame({c: pd.Series(v, dtype="object") for c, v in zip(columns, data)})


# ---- cleaning ---------------------------------------------------------------------------------------


def _clean_captions(values: pd.Series) -> pd.Series:
    """Whitespace-trimmed captions; only empty (or null) cells are missing (None)."""
    out = [(v.strip() or None) if isinstance(v, str) else None for v in values]
    return pd.Series(out, index=values.index, dtype="object")


def _classify_urls(urls: pd.Series, allow_local: bool, base_dir: Path) -> tuple[pd.Series, pd.Series]:
    """Return (normalised url, drop reason or None) per row."""
    out_urls, reasons = [], []
    for u in urls:
        u = u.strip() if isinstance(u, str) else ""
        if not u:
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
    url_column: str | None,
    caption_sources: list[str] | dict[str, str],
    fmt: str | None = None,
    allow_local_urls: bool = False,
    on_bad_row: str = "drop",
) -> NormalizeReport:
    """Normalise ``source`` into ``out_path`` (parquet); return the counts.

    Drop reasons, each row counted once, checked in this order: ``bad_row`` (a text-table row that
    cannot be read; its line number is listed in ``bad_rows``; ``on_bad_row="error"`` raises instead),
    ``empty_url``, ``bad_scheme`` (anything but http/https, or file:// when local URLs are allowed),
    ``no_caption`` (every caption source empty), ``duplicate_url`` (the first occurrence is kept).
    Local (file://) URLs without ``allow_local_urls`` stop the job with an error, since they read
    files from this machine. ``url_column`` None: ``Image Path`` for DreamLIP tables, ``url`` otherwise.
    """
    source = Path(source)
    if url_column is None:
        url_column = DREAMLIP_URL_COLUMN if fmt == "dreamlip" else "url"
    if not source.exists():
        raise TableError(f"{source}: source table not found (dataset {dataset!r})")
    if on_bad_row not in ON_BAD_ROW:
        raise TableError(f"datasets.{dataset}.on_bad_row: {on_bad_row!r}; expected one of {list(ON_BAD_ROW)}")
    captions = caption_columns(caption_sources)
    if not captions:
        raise TableError(f"dataset {dataset!r}: caption_sources is empty")
    kind = _detect_kind(source, fmt)
    if fmt == "dreamlip":
        _check_columns(source, _table_columns(source, kind), DREAMLIP_COLUMNS)
    columns = [url_column, *dict.fromkeys(captions.values())]
    report = NormalizeReport()
    bad = _BadRows(source, dataset, on_bad_row, report)
    schema = pa.schema(
        [("sample_id", pa.int64()), ("url", pa.string())] + [(name, pa.string()) for name in captions]
    )
    out_path = Path(out_path)
    staged = out_path.with_name(f".{out_path.name}.stage-{os.getpid()}")
    hashes = []
    first_local: tuple[int, str] | None = None
    try:
        with pq.ParquetWriter(staged, schema) as writer:
            for ids, df in _open_batches(source, kind, columns, bad):
                n = len(df)
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
    report.dropped = +report.dropped  # no zero counts (e.g. duplicate_url: 0)
    return report


def _table_columns(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        return pq.ParquetFile(path).schema_arrow.names
    return _text_columns(path, kind)


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
    return paths.chunk_name(i)


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
