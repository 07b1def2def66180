"""Alignment tuning: train a SAIL head on memory-mapped embeddings; resumable, multi-process.

Run in-process (one CPU or GPU) or under ``torchrun`` (``python -m sailflow.align.train ARGS.json``):
with N processes each takes its 1/N share of every global batch, the loss gathers features across
processes, and parameter gradients are summed, so the update is that of one batch of
``batch_size`` on one device.

Every ``checkpoint_every`` steps the complete training state (head, optimizer, step, RNG) is
written atomically to ``<out_dir>/state/``; a restarted job continues from it exactly (the batch
order is a function of the step). A state is resumed only by the very same run, unfinished: same
settings, same embedding files (unchanged since, see :mod:`sailflow.resume`), same process count;
otherwise training starts fresh and the log says why. A finished run removes its state. Non-finite losses are caught without a per-step host sync: a device-side
flag records the first bad step and is read at every log interval.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sailflow.align.heads import AlignmentHead
from sailflow.align.loader import BatchSampler, EmbeddingPairs, prefetch
from sailflow.align.losses import LOSSES
from sailflow.align.optim import lr_at, make_optimizer
from sailflow.config import ALIGN_RUNTIME_KEYS, without
from sailflow.dtypes import autocast_dtype
from sailflow.embeddings import open_chunks
from sailflow.gpu import init_distributed
from sailflow.io import atomic_path
from sailflow.resume import finish_state, load_checkpoint, prepare_state, run_identity, save_checkpoint

STATE_FILE = "state.safetensors"



class NonFiniteLoss(RuntimeError):
    pass


def save_state(state_dir: Path, head, opt, step: int, fingerprint: str, log_lines: int, running: torch.Tensor, n_running: int) -> None:
    """Atomically write the training state at ``step`` (rank 0 only), including the loss summed so
    far in the current log interval, so a resumed run logs exactly what an uninterrupted one does."""
    save_checkpoint(state_dir / STATE_FILE, head, opt, step, fingerprint,
                    meta={"log_lines": str(log_lines), "n_running": str(n_running)},
                    tensors={"log.running": running.detach().cpu().reshape(1)})


def load_state(state_dir: Path, head, opt, fingerprint: str, log=sys.stderr) -> tuple[int, int, float, int]:
    """Restore the state if there is one of this run (see :func:`sailflow.resume.load_checkpoint`);
    return (step, log lines to keep, running loss sum, steps in it)."""
    ckpt = load_checkpoint(state_dir / STATE_FILE, head, opt, fingerprint, log, name="align")
    if ckpt is None:
        return 0, 0, 0.0, 0
    step, meta, t = ckpt
    return step, int(meta["log_lines"]), float(t["log.running"][0]), int(meta["n_running"])


def _tensorboard(path: Path):
    """A SummaryWriter when tensorboard is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def train(args: dict, log=sys.stderr) -> dict:
    """Train a head. ``args``: image / text / extra (lists of chunk paths, extra may be empty),
    samples (chunk samples.parquet paths), settings (the align config), out_dir, meta (names)."""
    s = args["settings"]
    out_dir = Path(args["out_dir"])
    state_dir = out_dir / "state"
    rank, world, device = init_distributed()
    torch.manual_seed(int(s["seed"]))
    labels = {"image": args["image"], "text": args["text"]}
    if args.get("extra"):
        labels["extra"] = args["extra"]
    files = open_chunks(labels, samples=args.get("samples"))
    pairs = EmbeddingPairs(files["image"], files["text"], files.get("extra"), subset=s.get("subset"), seed=int(s["seed"]))
    held = pairs.split(float(s["holdout"]), int(s["seed"])) if s.get("holdout") else None
    sampler = BatchSampler(len(pairs), int(s["batch_size"]), int(s["seed"]), rank, world)
    total = int(s["epochs"]) * sampler.batches_per_epoch
    warmup = max(1, int(round(float(s["warmup"]) * total))) if float(s["warmup"]) < 1 else int(s["warmup"])

    head = AlignmentHead(pairs.vision_dim, pairs.text_dim, dim=int(s["dim"]), head=s["head"], width_factor=int(s["width_factor"]),
                         logit_scale=float(s["logit_scale"]), logit_bias=float(s["logit_bias"])).to(device)
    opt = make_optimizer(head, s["optimizer"], float(s["lr"]), float(s["weight_decay"]), s["betas"], bool(s["decay_all"]))
    loss_fn = LOSSES[s["loss"]]()
    identity = run_identity(without(s, ALIGN_RUNTIME_KEYS),
                            {label: args.get(label) or [] for label in ("image", "text", "extra", "samples")}, world=world)
    fp = json.dumps(identity, sort_keys=True)
    if rank == 0:
        prepare_state(state_dir, identity, log, name="align")
    if world > 1:
        dist.barrier()  # the other ranks read the state rank 0 has vetted
    step0, log_lines, running0, n_logged = load_state(state_dir, head, opt, fp, log)
    if world > 1:  # every rank starts from rank 0's parameters
        for p in head.parameters():
            dist.broadcast(p.data, 0)

    log_path = out_dir / "train_log.jsonl"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = log_path.read_text().splitlines()[:log_lines] if log_path.exists() else []
        with atomic_path(log_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    tb = _tensorboard(out_dir / "tensorboard") if rank == 0 else None
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    amp = autocast_dtype(s["precision"])
    log_every, ckpt_every = int(s["log_every"]), int(s["checkpoint_every"])
    running = torch.full((), running0, device=device)
    t0 = time.perf_counter()
    if rank == 0:
        print(f"[align] {len(pairs)} pairs, {sampler.batches_per_epoch} steps/epoch, {total} steps, warmup {warmup}, "
              f"world {world}, device {device}, head params {sum(p.numel() for p in head.parameters()):,}", file=log)

    for step, batch in prefetch(pairs, sampler, step0, total, device=device):
        lr = lr_at(step, float(s["lr"]), warmup, total)
        for g in opt.param_groups:
            g["lr"] = lr
        img, txt, ext, mask = batch.image, batch.text, batch.extra, batch.extra_mask  # on `device` already
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            zi = head.encode_image(img)
            zt = head.encode_text(txt)
            ze = head.encode_text(ext) if ext is not None else None
            out = loss_fn(zi.float(), zt.float(), head.logit_scale, head.logit_bias, ze.float() if ze is not None else None, mask)
        loss = out["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            for p in head.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        opt.step()
        head.clamp_logit_scale()
        bad = ~torch.isfinite(loss.detach())
        first_bad = torch.where(bad & (first_bad < 0), torch.tensor(step, device=device), first_bad)
        running += loss.detach()
        n_logged += 1
        last = step + 1 == total
        if (step + 1) % log_every == 0 or last:
            if int(first_bad) >= 0:  # the only host sync: once per log interval
                raise NonFiniteLoss(f"non-finite loss at step {int(first_bad)} (lr {lr_at(int(first_bad), float(s['lr']), warmup, total):.3g}); "
                                    f"last good state in {state_dir}")
            if rank == 0:
                rec = {"step": step + 1, "epoch": round((step + 1) / sampler.batches_per_epoch, 4), "loss": float(running) / n_logged,
                       "lr": lr, "logit_scale": float(head.logit_scale.detach().exp()), "logit_bias": float(head.logit_bias.detach()),
                       "pairs_per_s": round(n_logged * int(s["batch_size"]) / (time.perf_counter() - t0), 1)}
                for k in ("positive", "negative", "extra"):
                    if k in out:
                        rec[k] = float(out[k])
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log_lines += 1
                print(json.dumps(rec), file=log, flush=True)
                if tb is not None:
                    for k, v in rec.items():
                        if k != "step":
                            tb.add_scalar(f"train/{k}", v, rec["step"])
            running.zero_()
            t0, n_logged = time.perf_counter(), 0
        if rank == 0 and ((step + 1) % ckpt_every == 0 and not last):
            save_state(state_dir, head, opt, step + 1, fp, log_lines, running, n_logged)

    if tb is not None:
        tb.close()
    result = {"steps": total, "pairs": len(pairs)}
    if held is not None and len(held):
        result["holdout"] = holdout_retrieval(head, pairs, held, device)
    if rank == 0:
        head.save(out_dir, {**args.get("meta", {}), "settings": s, **result, "world": world})
        finish_state(state_dir)  # finished: a rerun (new inputs, --forcerun) trains from scratch
    if dist.is_initialized():
        dist.barrier()
    return result


@torch.no_grad()
def holdout_retrieval(head: AlignmentHead, pairs: EmbeddingPairs, held: np.ndarray, device, max_pairs: int = 5000) -> dict:
    """Image->caption and caption->image R@1 among ``max_pairs`` held-out pairs (the first by row)."""
    b = pairs.gather(held[:max_pairs])
    zi = torch.nn.functional.normalize(head.encode_image(b.image.to(device)).float(), dim=-1)
    zt = torch.nn.functional.normalize(head.encode_text(b.text.to(device)).float(), dim=-1)
    sim = zi @ zt.T
    target = torch.arange(len(sim), device=sim.device)
    return {
        "pairs": len(sim),
        "image_to_text_r1": float((sim.argmax(1) == target).float().mean()),
        "text_to_image_r1": float((sim.argmax(0) == target).float().mean()),
        "chance": 1.0 / len(sim),
    }


if __name__ == "__main__":
    from sailflow.gpu import torchrun_entry

    torchrun_entry(train)
