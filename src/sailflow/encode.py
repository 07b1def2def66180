"""Pre-encoding: run a frozen backbone over one chunk and store the embeddings.

Images are read straight from the img2dataset tars (offsets in ``samples.parquet``), decoded and
preprocessed in DataLoader worker processes while the model runs; rows are written in
``samples.parquet`` order. Captions are sorted by length so each batch pads little, and the
results are put back in row order. The same loops encode evaluation sets (image files, prompt and
caption lists) so that evaluation sees features computed exactly as training did.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sailflow.backbones import fingerprint
from sailflow.data.shards import ChunkImages
from sailflow.dtypes import DTYPES
from sailflow.embeddings import save_embeddings



def chunk_meta(backbone, dataset: str, chunk: str) -> dict:
    """The metadata every embedding file of a chunk carries about what produced it."""
    return {"backbone": backbone.name, "fingerprint": fingerprint(backbone.name, backbone.spec),
            "pooling": backbone.pooling, "dataset": dataset, "chunk": chunk}


def _autocast(device: torch.device, dtype: str):
    if device.type == "cuda" and dtype in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=DTYPES[dtype])
    return nullcontext()


def run_images(ds: Dataset, backbone, *, batch_size: int = 256, workers: int = 2, store_dtype: str = "fp16",
               device: str = "cpu", log=sys.stderr, desc: str = "encode images") -> torch.Tensor:
    """Backbone output for every item ``(i, pixels)`` of ``ds``, in item order, as ``store_dtype``."""
    dev = torch.device(device)
    loader = DataLoader(
        ds, batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    out = None
    with torch.inference_mode(), _autocast(dev, store_dtype):
        for idx, x in tqdm(loader, total=len(loader), file=log, desc=desc, mininterval=5):
            y = backbone(x.to(dev, non_blocking=True)).to(DTYPES[store_dtype]).cpu()
            if out is None:
                out = torch.empty((len(ds), *y.shape[1:]), dtype=DTYPES[store_dtype])
            out[idx] = y
    if out is None:  # no items: zero rows with the backbone's output shape
        from PIL import Image

        with torch.inference_mode():
            probe = backbone(backbone.preprocess(Image.new("RGB", (64, 64)))[None].to(dev))
        out = torch.empty((0, *probe.shape[1:]), dtype=DTYPES[store_dtype])
    return out


def run_texts(texts: list[str], backbone, *, batch_size: int = 256, store_dtype: str = "fp16", device: str = "cpu",
              log=sys.stderr, desc: str = "encode texts") -> torch.Tensor:
    """``backbone.encode`` of every text, in order; batches go longest first so padding stays small."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    dev = torch.device(device)
    out = None
    with torch.inference_mode(), _autocast(dev, store_dtype):
        for start in tqdm(range(0, len(order), batch_size), file=log, desc=desc, mininterval=5):
            idx = order[start : start + batch_size]
            y = backbone.encode([texts[i] for i in idx]).to(DTYPES[store_dtype]).cpu()
            if out is None:
                out = torch.empty((len(texts), y.shape[-1]), dtype=DTYPES[store_dtype])
            out[torch.from_numpy(idx)] = y
    if out is None:
        with torch.inference_mode():
            out = torch.empty((0, backbone.encode([""]).shape[-1]), dtype=DTYPES[store_dtype])
    return out


def encode_images(
    samples_path: str | Path,
    images_dir: str | Path,
    out_path: str | Path,
    backbone,
    *,
    meta: dict,
    batch_size: int = 256,
    workers: int = 2,
    store_dtype: str = "fp16",
    device: str = "cpu",
    log=sys.stderr,
) -> int:
    """Encode every image of a chunk; write ``out_path``. Returns the number of rows."""
    samples = pd.read_parquet(samples_path, columns=["sample_id", "shard", "offset", "size"])
    ds = ChunkImages(samples, images_dir, backbone.preprocess)
    out = run_images(ds, backbone, batch_size=batch_size, workers=workers, store_dtype=store_dtype, device=device, log=log,
                     desc=f"encode {Path(out_path).name}")
    save_embeddings(out_path, out, samples["sample_id"].to_numpy(), {**meta, "modality": "image"})
    return len(ds)


def encode_texts(
    samples_path: str | Path,
    caption_source: str,
    out_path: str | Path,
    backbone,
    *,
    meta: dict,
    batch_size: int = 256,
    store_dtype: str = "fp16",
    device: str = "cpu",
    log=sys.stderr,
) -> int:
    """Encode caption column ``caption_source`` of a chunk; empty captions get ``present = 0``."""
    samples = pd.read_parquet(samples_path, columns=["sample_id", caption_source])
    texts = samples[caption_source]
    present = texts.notna().to_numpy()
    out = run_texts(texts.fillna("").astype(str).tolist(), backbone, batch_size=batch_size, store_dtype=store_dtype,
                    device=device, log=log, desc=f"encode {caption_source}")
    save_embeddings(out_path, out, samples["sample_id"].to_numpy(), {**meta, "modality": "text", "caption_source": caption_source}, present=present)
    return len(out)
