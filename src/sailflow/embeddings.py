"""Embedding chunk files: writing them, and reading them back memory-mapped and checked.

One safetensors file per (dataset, chunk, backbone[, caption source]) holds

    embeddings  [N, D] (or [N, T, D] for token features), fp16/bf16/fp32
    sample_id   [N] int64, the rows of ``samples.parquet`` in order
    present     [N] uint8, text only: 0 where the caption was empty (its row is a placeholder)

and string metadata: backbone, fingerprint, pooling, dim, dtype, count, keys_hash (sha256 of the
sample ids), dataset, chunk, modality and caption_source. Row k of every file of a chunk is
sample k of that chunk; :func:`check_aligned` refuses files whose count or keys disagree.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from sailflow.io import atomic_path

_ST_DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "I64": np.int64, "U8": np.uint8}


class EmbeddingMismatch(ValueError):
    """Embedding files that must line up do not; the message names the chunk and file."""


def keys_hash(sample_ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(sample_ids, dtype=np.int64).tobytes()).hexdigest()


def save_embeddings(path: str | Path, embeddings: torch.Tensor, sample_ids: np.ndarray, meta: dict, present: np.ndarray | None = None) -> None:
    """Write one chunk file atomically. ``meta`` values are stored as strings."""
    # the ids are copied: they may be read-only (another file's memory map), which torch warns about
    tensors = {"embeddings": embeddings.contiguous(), "sample_id": torch.from_numpy(np.array(sample_ids, dtype=np.int64))}
    if present is not None:
        tensors["present"] = torch.from_numpy(np.asarray(present, dtype=np.uint8))
    full = {
        **{k: str(v) for k, v in meta.items()},
        "count": str(len(sample_ids)),
        "dim": str(embeddings.shape[-1]),
        "shape": json.dumps(list(embeddings.shape)),
        "dtype": str(embeddings.dtype).removeprefix("torch."),
        "keys_hash": keys_hash(sample_ids),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=full)


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise EmbeddingMismatch(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EmbeddingMismatch(f"{path}: corrupt safetensors header ({e})") from None
    return header, 8 + n


@dataclass
class EmbeddingFile:
    """One chunk file, memory-mapped (nothing is read into RAM until indexed)."""

    path: Path
    meta: dict
    embeddings: np.ndarray  # memmap; bf16 is exposed as uint16 (use :meth:`rows`)
    sample_id: np.ndarray
    present: np.ndarray | None

    @property
    def count(self) -> int:
        return len(self.sample_id)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.meta.get("dtype") == "bfloat16" else torch.from_numpy(np.empty(0, self.embeddings.dtype)).dtype

    def rows(self, idx, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``idx`` (an index array or a slice) as a new torch tensor of the stored dtype, or
        written into ``out`` (index arrays only: a tensor of the stored dtype, ``len(idx)`` rows).

        Index arrays are gathered by numpy on the calling thread (one row copy each, GIL released):
        torch's parallel ``index_select`` spins on its OpenMP threads and was 10x slower with a busy
        neighbour on a core (measured: a gather took 8 ms instead of 0.75 ms)."""
        bf16 = self.meta.get("dtype") == "bfloat16"
        if isinstance(idx, np.ndarray) and idx.dtype != bool:
            idx = idx.astype(np.intp, copy=False)
            if len(idx) and (idx.min() < 0 or idx.max() >= self.count):  # mode="clip" below would clamp them silently
                raise IndexError(f"{self.path}: row index out of range [0, {self.count})")
            if out is None:
                t = torch.from_numpy(np.take(self.embeddings, idx, axis=0))
            else:
                if out.dtype != self.dtype or out.shape != (len(idx), *self.embeddings.shape[1:]):
                    raise ValueError(f"{self.path}: out is {out.dtype} {tuple(out.shape)}, rows are {self.dtype} "
                                     f"{(len(idx), *self.embeddings.shape[1:])}")
                # bf16 is stored as uint16: copy the bits into a uint16 view of the bfloat16 buffer
                np.take(self.embeddings, idx, axis=0, out=(out.view(torch.uint16) if bf16 else out).numpy(), mode="clip")
                return out
        else:
            t = torch.from_numpy(np.array(self.embeddings[idx]))
        return t.view(torch.bfloat16) if bf16 else t


def open_embeddings(path: str | Path) -> EmbeddingFile:
    """Memory-map one chunk file and check it against its own metadata."""
    path = Path(path)
    header, start = _header(path)
    meta = header.pop("__metadata__", {}) or {}
    size = path.stat().st_size

    def mm(name: str):
        if name not in header:
            return None
        h = header[name]
        lo, hi = h["data_offsets"]
        if start + hi > size:
            raise EmbeddingMismatch(f"{path}: truncated (tensor {name!r} ends at byte {start + hi}, file has {size})")
        return np.memmap(path, dtype=_ST_DTYPES[h["dtype"]], mode="r", offset=start + lo, shape=tuple(h["shape"]))

    emb, ids = mm("embeddings"), mm("sample_id")
    if emb is None or ids is None:
        raise EmbeddingMismatch(f"{path}: missing 'embeddings' or 'sample_id' tensor")
    if len(ids) != emb.shape[0] or str(len(ids)) != meta.get("count"):
        raise EmbeddingMismatch(f"{path}: {emb.shape[0]} embeddings, {len(ids)} sample ids, metadata count {meta.get('count')}")
    if keys_hash(np.asarray(ids)) != meta.get("keys_hash"):
        raise EmbeddingMismatch(f"{path}: sample ids do not match the keys_hash in its metadata (corrupt file)")
    return EmbeddingFile(path, meta, emb, np.asarray(ids), mm("present"))


def check_aligned(files: dict[str, EmbeddingFile], expected_ids: np.ndarray | None = None) -> None:
    """Refuse files of one chunk (``{label: file}``) whose rows are not the same samples in the same order."""
    items = list(files.items())
    ref_label, ref = items[0]
    ref_hash = keys_hash(expected_ids) if expected_ids is not None else ref.meta["keys_hash"]
    for label, f in items:
        if f.meta["keys_hash"] != ref_hash:
            what = "samples.parquet" if expected_ids is not None else f"{ref_label} ({ref.path})"
            raise EmbeddingMismatch(
                f"chunk {f.meta.get('chunk', '?')} of {f.meta.get('dataset', '?')}: {label} ({f.path}) has "
                f"{f.count} rows whose sample ids differ from {what}; re-encode this chunk"
            )


def open_chunks(paths_by_label: dict[str, list[str | Path]], samples: list[str | Path] | None = None) -> dict[str, list[EmbeddingFile]]:
    """Open the chunk files of several modalities (``{label: [chunk paths in order]}``), checking
    that chunk i of every label holds the same samples (and, if given, those of ``samples[i]``)."""
    import pandas as pd

    opened = {label: [open_embeddings(p) for p in paths] for label, paths in paths_by_label.items()}
    counts = {label: len(v) for label, v in opened.items()}
    if len(set(counts.values())) != 1:
        raise EmbeddingMismatch(f"different numbers of chunk files per modality: {counts}")
    for i in range(next(iter(counts.values()))):
        ids = None
        if samples is not None:
            ids = pd.read_parquet(samples[i], columns=["sample_id"])["sample_id"].to_numpy()
        check_aligned({label: files[i] for label, files in opened.items()}, ids)
    return opened
