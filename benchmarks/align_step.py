"""Alignment training step time: fed by our loader (memory-mapped chunks, prefetch thread) against
the same steps on batches already in memory, in one run. Prints one JSON line with the ratio
(goal <= 1.1: the loader is hidden behind the step).

    python benchmarks/align_step.py [--pairs 60000] [--batch 4096] [--steps 30] [--device cpu] [--threads N]

2-core VM, CPU, defaults, 2026-11-30: ratio 1.00-1.03 with the loader's two gather threads and 1.00-1.01
with one (``--threads 1``), two runs each: the second gather thread does not slow the step it overlaps.

On a GPU, ``--vision-dim 2048 --text-dim 4096 --batch 32768 --dim 1024 --width 8`` is SAIL-L with
NV-Embed-v2 (random data).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sailflow.align.heads import AlignmentHead
from sailflow.align.loader import BatchSampler, EmbeddingPairs, prefetch
from sailflow.align.losses import SigLipLoss
from sailflow.align.optim import make_optimizer
from sailflow.embeddings import open_embeddings, save_embeddings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--vision-dim", type=int, default=256)
    ap.add_argument("--text-dim", type=int, default=384)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="the loader's gather threads (default: the loader's own)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        bounds = np.linspace(0, a.pairs, 9).astype(int)
        for c in range(8):
            ids = np.arange(bounds[c], bounds[c + 1])
            for label, dim in (("image", a.vision_dim), ("text", a.text_dim), ("extra", a.text_dim)):
                x = torch.from_numpy(rng.standard_normal((len(ids), dim), dtype=np.float32).astype(np.float16))
                save_embeddings(d / f"{label}_{c}.safetensors", x, ids, {})
        f = {k: [open_embeddings(p) for p in sorted(d.glob(f"{k}_*.safetensors"))] for k in ("image", "text", "extra")}
        pairs = EmbeddingPairs(f["image"], f["text"], f["extra"], threads=a.threads)
        sampler = BatchSampler(len(pairs), a.batch, seed=0)
        head = AlignmentHead(a.vision_dim, a.text_dim, dim=a.dim, head="star", width_factor=a.width).to(dev)
        opt = make_optimizer(head, "lion", 1e-5, 1e-4)
        loss_fn = SigLipLoss()

        def step(b):
            img, txt, ext = (t.to(dev, non_blocking=True) for t in (b.image, b.text, b.extra))
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                out = loss_fn(head.encode_image(img).float(), head.encode_text(txt).float(), head.logit_scale,
                              head.logit_bias, head.encode_text(ext).float())
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        in_memory = [pairs.gather(pairs.rows[sampler.indices(s)]) for s in range(a.steps)]
        if dev.type == "cuda":  # the strictest baseline: batches already on the device
            in_memory = [type(b)(*(t.to(dev) for t in (b.image, b.text, b.extra, b.extra_mask))) for b in in_memory]
        step(in_memory[0])  # warm-up
        sync()
        t = time.perf_counter()
        for b in in_memory:
            step(b)
        sync()
        t_mem = time.perf_counter() - t
        t = time.perf_counter()
        for _, b in prefetch(pairs, sampler, 0, a.steps, device=dev):
            step(b)
        sync()
        t_loader = time.perf_counter() - t
    print(json.dumps({
        "benchmark": "align_step", "device": str(dev), "batch": a.batch, "dims": [a.vision_dim, a.text_dim, a.dim],
        "width_factor": a.width, "steps": a.steps,
        "in_memory_steps_per_s": round(a.steps / t_mem, 3), "loader_steps_per_s": round(a.steps / t_loader, 3),
        "ratio": round(t_loader / t_mem, 3),
    }))


if __name__ == "__main__":
    sys.exit(main())
