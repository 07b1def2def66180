"""Image encoding throughput: the pipeline against the bare model forward, in one run.

Builds a chunk (one webdataset tar + samples.parquet, like the data stages leave it) and a
DINOv2 backbone with random weights, then measures
  (a) model: forward alone on pre-decoded, pre-processed tensors already in memory;
  (b) pipeline: sailflow.encode.encode_images (tar read, decode, the backbone's own processor in
      DataLoader workers, forward, safetensors write);
  (c) input: the DataLoader alone (read + decode + preprocess, no model).
Prints one JSON line with images/s of each and ``ratio`` = (b) / (a): 1.0 means decode and IO are
fully hidden behind the model.

    python benchmarks/encode.py [--images 1024] [--workers 2] [--model tiny|large] [--device cpu|cuda]

``--model small`` / ``large`` are DINOv2-S/L-sized (patch 14, 224 px crops, random weights); with
``--device cuda`` they run in bf16 autocast with SDPA. On a 2-core CPU the workers and the model share
the same two cores, so only a model slower than decoding (``small``) can hide the input pipeline.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from sailflow.backbones import load_vision
from sailflow.backbones.tiny import build_tiny
from sailflow.data.shards import ChunkImages
from sailflow.encode import encode_images


def make_chunk(d: Path, n: int, side: int) -> None:
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    with tarfile.open(d / "images" / "00000.tar", "w") as tf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.roll(base, i, axis=0)).save(buf, format="JPEG", quality=90)
            info = tarfile.TarInfo(f"{i:09d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tf.addfile(info, buf)
    with tarfile.open(d / "images" / "00000.tar") as tf:
        rows = [{"sample_id": i, "shard": "00000.tar", "offset": m.offset_data, "size": m.size} for i, m in enumerate(tf)]
    pd.DataFrame(rows).to_parquet(d / "samples.parquet", index=False)


SIZES = {  # DINOv2 ViT-S/14 and ViT-L/14 shapes, random weights
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def build_sized(out: Path, size: str) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**SIZES[size], patch_size=14, image_size=518)).save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 256}, resample=3, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", choices=["tiny", "small", "large"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--side", type=int, default=None, help="stored image side (default: 96 tiny, 320 large)")
    args = ap.parse_args()
    side = args.side or (96 if args.model == "tiny" else 320)
    dtype = "bf16" if args.device.startswith("cuda") else "fp16"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_chunk(tmp / "chunk", args.images, side)
        path = build_tiny("dinov2", tmp / "model") if args.model == "tiny" else build_sized(tmp / "model", args.model)
        bb = load_vision("bench", {"kind": "vision", "family": "dinov2", "path": str(path), "pooling": "concat"}, args.device)
        samples = pd.read_parquet(tmp / "chunk" / "samples.parquet")
        ds = ChunkImages(samples, tmp / "chunk" / "images", bb.preprocess)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)

        t = time.perf_counter()
        batches = [x for _, x in loader]  # (c) input pipeline alone; keeps the tensors for (a)
        t_input = time.perf_counter() - t

        dev = torch.device(args.device)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
        with torch.inference_mode(), ctx:
            bb(batches[0].to(dev))  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for x in batches:
                bb(x.to(dev, non_blocking=True)).to(torch.float16).cpu()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_model = time.perf_counter() - t

        t = time.perf_counter()
        encode_images(tmp / "chunk" / "samples.parquet", tmp / "chunk" / "images", tmp / "out.safetensors", bb,
                      meta={}, batch_size=args.batch_size, workers=args.workers, store_dtype=dtype, device=args.device,
                      log=open("/dev/null", "w"))
        t_pipe = time.perf_counter() - t
    n = args.images
    print(json.dumps({
        "benchmark": "encode_images", "model": args.model, "device": args.device, "images": n,
        "workers": args.workers, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "model_images_per_s": round(n / t_model, 1),
        "pipeline_images_per_s": round(n / t_pipe, 1),
        "input_only_images_per_s": round(n / t_input, 1),
        "ratio": round(t_model / t_pipe, 3),
    }))


if __name__ == "__main__":
    main()
