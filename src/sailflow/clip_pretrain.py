"""A CLIP trained from scratch with open_clip, as miniVLM's first stage; resumable, multi-process.

The model is data: an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, as in
open_clip's ``model_configs/*.json``) plus an optional ``preprocess`` (mean, std, interpolation,
resize_mode). open_clip's own factory builds it, its bundled ``SimpleTokenizer`` tokenizes the captions
(no download) and its ``ClipLoss`` scores each global batch: with N processes every process encodes
its 1/N share, the features are gathered *with* gradient (``local_loss=False, gather_with_grad=True``)
and every process computes the loss of the whole batch; DDP averages the gradients, which is then
exactly the gradient of one batch of ``batch_size`` on one device.

Data: a dataset this pipeline downloaded, i.e. each chunk's ``samples.parquet`` (sample_id, shard,
offset, size, one column per caption source) and the webdataset tars in its ``images/`` folder, read
by byte offset. Rows with an empty caption are dropped and counted. No augmentation (as miniVLM):
images get the evaluation transform (resize, centre crop, normalise), so the batch of a step is a
function of (seed, step) only and a resumed run sees exactly the batches an uninterrupted one does.

Output folder (``results/{run}/clip/``), each file written atomically:

    open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}  (open_clip's local-dir layout)
    open_clip_model.safetensors  the model's state dict (float32)
    train_log.jsonl              one line per log interval: step, epoch, loss, lr, logit_scale, samples_per_s
    manifest.json                fingerprint, identity, steps, samples, drops, losses, settings (written last)
    state/                       the training state while unfinished (see :mod:`sailflow.resume`)

The folder loads back through the same code as any open_clip backbone:
``open_clip.create_model_and_transforms("local-dir:results/{run}/clip")``, i.e. a ``backbones:`` entry
``{family: open_clip, path: "local-dir:results/{run}/clip"}`` (:func:`backbone_spec`): a vision backbone
(``projected``) and a text backbone for zero-shot evaluation (:class:`ClipModel`), or a LLaVA ``open_clip``
tower (patch tokens of a block, CLS dropped).

Run in-process or under ``torchrun`` (``python -m sailflow.clip_pretrain ARGS.json``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from sailflow.config import digest, without
from sailflow.data.images import decode_rgb, image_rgb
from sailflow.data.shards import captioned_samples, read_sample_bytes
from sailflow.dtypes import autocast_dtype
from sailflow.gpu import init_distributed
from sailflow.io import atomic_path, read_json, write_json
from sailflow.resume import finish_state, load_checkpoint, prepare_state, run_identity, save_checkpoint

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "state.safetensors"
# Settings that change how training is run or reported, never its result: kept out of the identity,
# so a resume may change them.
RUNTIME_KEYS = frozenset({"log_every", "checkpoint_every", "workers"})
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps exp(logit_scale) at 100


class ClipPretrainError(ValueError):
    """A setting or an input the trainer cannot use; the message says which and what to do."""


class NonFiniteLoss(RuntimeError):
    pass


# ---- the model as data -------------------------------------------------------------------------
def check_model_config(model_cfg: dict) -> dict:
    """``model_cfg`` (an open_clip model config) after checking the keys open_clip needs."""
    if not isinstance(model_cfg, dict):
        raise ClipPretrainError(f"clip model: expected an open_clip model config (a mapping), got {type(model_cfg).__name__}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise ClipPretrainError(f"clip model: missing {missing}; an open_clip model config has embed_dim, "
                                "vision_cfg {image_size, layers, width, patch_size, ...} and text_cfg "
                                "{context_length, vocab_size, width, heads, layers}")
    if "hf_model_name" in model_cfg["text_cfg"] or "timm_model_name" in model_cfg["vision_cfg"]:
        raise ClipPretrainError("clip model: a text tower from transformers or a timm vision tower is not trained from "
                                "scratch here (they need a download); give the open_clip transformer configs instead")
    for key in ("image_size", "layers", "width", "patch_size"):
        if key not in model_cfg["vision_cfg"]:
            raise ClipPretrainError(f"clip model: vision_cfg has no {key!r}")
    for key in ("context_length", "vocab_size", "width", "heads", "layers"):
        if key not in model_cfg["text_cfg"]:
            raise ClipPretrainError(f"clip model: text_cfg has no {key!r}")
    return model_cfg


def write_open_clip_config(folder: str | os.PathLike, model_cfg: dict, preprocess: dict | None = None) -> Path:
    """Write ``folder/open_clip_config.json`` as open_clip's ``local-dir:`` loader reads it."""
    path = Path(folder) / CONFIG_FILE
    write_json(path, {"model_cfg": check_model_config(model_cfg), "preprocess_cfg": dict(preprocess or {})})
    return path


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning when a local-dir has no weights: expected when building a new model."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _create(name: str, device):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    return model, preprocess, open_clip.get_tokenizer(name)


def build_model(model_cfg: dict, preprocess: dict | None = None, device: str | torch.device = "cpu"):
    """A new, randomly initialised CLIP from ``model_cfg``, built by open_clip's factory exactly as
    :func:`load_model` rebuilds it (from a ``local-dir:`` folder holding the config, here without
    weights). Returns ``(model, preprocess, tokenizer)``: ``preprocess(PIL) -> [3, H, W]`` is the
    evaluation transform, ``tokenizer(list[str]) -> LongTensor[B, context_length]``."""
    with tempfile.TemporaryDirectory(prefix="sailflow-clip-") as folder:
        write_open_clip_config(folder, model_cfg, preprocess)
        with _quiet_open_clip():
            return _create(f"local-dir:{folder}", device)


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """The CLIP saved in ``folder`` (:func:`save_model`): ``(model, preprocess, tokenizer)``, eval mode."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise ClipPretrainError(f"{folder}: no {WEIGHTS_FILE}; train the clip stage first")
    model, preprocess, tokenizer = _create(f"local-dir:{folder}", device)
    return model.eval(), preprocess, tokenizer


def save_model(folder: str | os.PathLike, model: torch.nn.Module, model_cfg: dict, preprocess: dict | None = None) -> None:
    """Write the weights (float32 safetensors) and ``open_clip_config.json`` into ``folder``, atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt", "model_cfg": json.dumps(model_cfg, sort_keys=True)})
    write_open_clip_config(folder, model_cfg, preprocess)


def backbone_spec(folder: str | os.PathLike, kind: str = "vision") -> dict:
    """The ``backbones:`` entry that loads a saved CLIP as a ``vision`` or ``text`` backbone."""
    if kind not in ("vision", "text"):
        raise ValueError(f"kind must be 'vision' or 'text', not {kind!r}")
    return {"kind": kind, "family": "open_clip", "path": f"local-dir:{folder}", "pooling": "projected"}


class ClipModel:
    """A saved CLIP for the contrastive evaluation kinds (:class:`sailflow.model.EmbeddingModel`):
    ``encode_image(PIL images | paths | bytes) -> [N, D]`` and ``encode_text(list[str]) -> [N, D]``,
    L2-normalised, computed by the backbones the evaluation stage loads (:func:`backbone_spec`)."""

    def __init__(self, folder: str | os.PathLike, name: str = "clip", device: str | torch.device = "cpu"):
        from sailflow.backbones import load_text, load_vision

        self.vision = load_vision(name, backbone_spec(folder, "vision"), device)
        self.text = load_text(name, backbone_spec(folder, "text"), device)
        self.device = torch.device(device)

    @torch.no_grad()
    def encode_image(self, images, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            batch = [image_rgb(im) for im in images[i : i + batch_size]]
            x = torch.stack([self.vision.preprocess(im) for im in batch]).to(self.device)
            out.append(F.normalize(self.vision(x).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = [F.normalize(self.text.encode(list(texts[i : i + batch_size])).float(), dim=-1) for i in range(0, len(texts), batch_size)]
        return torch.cat(out)


# ---- the loss ------------------------------------------------------------------------------------
def make_loss(rank: int = 0, world: int = 1):
    """open_clip's ``ClipLoss`` over the global batch: features gathered from every process with their
    gradient, the full ``[N, N]`` logits on every process."""
    from open_clip.loss import ClipLoss

    return ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)


def batch_loss(model, loss_fn, images: torch.Tensor, tokens: torch.Tensor, amp: torch.dtype | None = None) -> torch.Tensor:
    """The CLIP loss of this process's share of a batch (``images [b, 3, H, W]``, ``tokens [b, T]``).
    ``model`` may be DDP-wrapped (its forward returns normalised features and ``exp(logit_scale)``).
    The loss itself is computed in float32 (or the features' wider dtype)."""
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None):
        zi, zt, scale = model(images, tokens)[:3]
    dtype = torch.promote_types(zi.dtype, torch.float32)
    with warnings.catch_warnings():
        # open_clip gathers with torch.distributed.nn.all_gather (the gather with gradient), which torch
        # marks deprecated; the warning would otherwise fill the log, once per step
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning)
        return loss_fn(zi.to(dtype), zt.to(dtype), scale.to(dtype))


# ---- data ----------------------------------------------------------------------------------------
class CaptionedImages:
    """The (image, caption) pairs of a downloaded dataset: row r of each chunk's ``samples.parquet``
    with a non-empty ``caption_source``, its image read from ``images_dirs[k]/shard`` at ``offset``.
    ``drops`` counts the rows left out (``empty_caption``)."""

    def __init__(self, samples_parquets: list, images_dirs: list, caption_source: str):
        if len(samples_parquets) != len(images_dirs):
            raise ClipPretrainError(f"{len(samples_parquets)} samples.parquet files but {len(images_dirs)} image folders")
        if not samples_parquets:
            raise ClipPretrainError("no samples.parquet files given: the clip stage needs a downloaded dataset")
        folders, shards, offsets, sizes, captions = [], [], [], [], []
        self.drops: Counter = Counter()
        self.images_dirs = [str(d) for d in images_dirs]
        for k, path in enumerate(samples_parquets):
            table, empty = captioned_samples(path, caption_source, ClipPretrainError)
            self.drops["empty_caption"] += empty
            folders.append(np.full(len(table), k, dtype=np.int32))
            shards.append(table["shard"].to_numpy().astype(str))
            offsets.append(table["offset"].to_numpy().astype(np.int64))
            sizes.append(table["size"].to_numpy().astype(np.int64))
            captions.append(table[caption_source].to_numpy().astype(str))
        self.folder, self.shard = np.concatenate(folders), np.concatenate(shards)
        self.offset, self.size, self.caption = np.concatenate(offsets), np.concatenate(sizes), np.concatenate(captions)
        self.drops = +self.drops

    def __len__(self) -> int:
        return len(self.shard)

    def tars(self) -> list[str]:
        """Every tar the pairs are read from (sorted)."""
        pairs = set(zip(self.folder.tolist(), self.shard.tolist()))
        return sorted(str(Path(self.images_dirs[k]) / s) for k, s in pairs)

    def image(self, i: int):
        folder = self.images_dirs[self.folder[i]]
        data = read_sample_bytes(folder, self.shard[i], self.offset[i], self.size[i])
        try:
            return decode_rgb(data)
        except Exception as e:  # the filter stage decoded this image: something changed on disk
            raise ClipPretrainError(f"{Path(folder) / self.shard[i]}: the image at offset {self.offset[i]} no longer decodes "
                                    f"({e}); rerun the data stages of this dataset") from None


class BatchPlan:
    """Which rows make up step ``t``'s batch: epoch ``e = t // batches_per_epoch`` visits the rows in a
    permutation drawn from ``(seed, e)``, cut into full batches (the remainder of an epoch is skipped);
    process ``rank`` of ``world`` takes the ``rank``-th of ``world`` equal slices of each batch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ClipPretrainError(f"batch_size {batch_size} is not divisible by the {world} processes")
        if n < batch_size:
            raise ClipPretrainError(f"{n} image-caption pairs are fewer than one batch of {batch_size}; lower clip.batch_size")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.batches_per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def rows(self, step: int) -> np.ndarray:
        epoch, b = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        local = self.batch_size // self.world
        start = b * self.batch_size + self.rank * local
        return self._perm[start : start + local]


class StepBatches(torch.utils.data.Dataset):
    """Item ``t``: this process's share of step ``t``'s batch, ``(images [b, 3, H, W], tokens [b, T])``."""

    def __init__(self, pairs: CaptionedImages, plan: BatchPlan, preprocess, tokenizer):
        self.pairs, self.plan, self.preprocess, self.tokenizer = pairs, plan, preprocess, tokenizer

    def __getitem__(self, step: int):
        rows = self.plan.rows(step)
        images = torch.stack([self.preprocess(self.pairs.image(i)) for i in rows])
        tokens = self.tokenizer([self.pairs.caption[i] for i in rows])
        return images, tokens


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers must not spin on cores the training process needs


def batches(dataset: StepBatches, first: int, total: int, workers: int):
    """Steps ``first .. total-1`` in order, loaded ahead by ``workers`` processes (0: in this one)."""
    if workers <= 0:
        return (dataset[t] for t in range(first, total))
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(first, total), num_workers=workers,
                                            worker_init_fn=_one_thread, prefetch_factor=4, pin_memory=torch.cuda.is_available()))


# ---- optimisation --------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (``ndim >= 2``: no biases, norms, class token,
    logit_scale), as miniVLM."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)  # fused: one kernel per step, CPU or GPU


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps to ``lr``, then cosine down to ``min_lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def total_steps(s: dict, batches_per_epoch: int) -> int:
    """``steps`` if set, else ``epochs`` full passes."""
    if s.get("steps") is not None:
        return int(s["steps"])
    if s.get("epochs") is not None:
        return max(1, int(round(float(s["epochs"]) * batches_per_epoch)))
    raise ClipPretrainError("clip: set `steps` or `epochs`")


def warmup_steps(s: dict, total: int) -> int:
    w = float(s.get("warmup", 0))
    return max(1, int(round(w * total))) if w < 1 else int(w)


# ---- the training program ------------------------------------------------------------------------
def save_state(state_dir: Path, model, opt, step: int, fingerprint: str, log_lines: int, running: torch.Tensor, n_running: int) -> None:
    """Write the training state at ``step`` (rank 0), with the loss summed so far in the current log
    interval, so a resumed run logs exactly what an uninterrupted one does."""
    save_checkpoint(state_dir / STATE_FILE, model, opt, step, fingerprint,
                    meta={"log_lines": str(log_lines), "n_running": str(n_running)},
                    tensors={"log.running": running.detach().double().cpu().reshape(1)})


def load_state(state_dir: Path, model, opt, fingerprint: str, log=sys.stderr) -> tuple[int, int, float, int]:
    """(step, log lines to keep, running loss sum, steps in it) of this run's state; zeros when none."""
    ckpt = load_checkpoint(state_dir / STATE_FILE, model, opt, fingerprint, log, name="clip")
    if ckpt is None:
        return 0, 0, 0.0, 0
    step, meta, t = ckpt
    return step, int(meta["log_lines"]), float(t["log.running"][0]), int(meta["n_running"])


def train(args: dict, log=sys.stderr) -> dict:
    """Train a CLIP from scratch. ``args``:

        samples       list of chunk ``samples.parquet`` paths
        images_dirs   the folder of each chunk's tars (``chunks/{chunk}/images``)
        out_dir       ``results/{run}/clip``
        settings      model (open_clip model config), preprocess (or null), caption_source, batch_size
                      (global), steps or epochs, lr, min_lr, warmup (steps, or a fraction < 1), betas,
                      eps, weight_decay, grad_clip (0: none), precision (fp32 | bf16), seed;
                      runtime: log_every, checkpoint_every, workers (loader processes)
        meta          names recorded in the manifest (run, dataset)

    Returns the manifest (also written to ``out_dir/manifest.json``)."""
    s = args["settings"]
    out_dir = Path(args["out_dir"])
    state_dir = out_dir / "state"
    rank, world, device = init_distributed()
    seed = int(s["seed"])
    model_cfg, preprocess_cfg = check_model_config(s["model"]), s.get("preprocess") or {}
    amp = autocast_dtype(s.get("precision", "fp32"))
    if amp == torch.float16:
        raise ClipPretrainError("clip.precision fp16 needs loss scaling, which this trainer does not do; use bf16 or fp32")

    pairs = CaptionedImages(args["samples"], args["images_dirs"], s["caption_source"])
    plan = BatchPlan(len(pairs), int(s["batch_size"]), seed, rank, world)
    total = total_steps(s, plan.batches_per_epoch)
    warmup = warmup_steps(s, total)
    identity = run_identity(without(s, RUNTIME_KEYS), {"samples": list(args["samples"]), "images": pairs.tars()}, world=world)
    fingerprint = json.dumps(identity, sort_keys=True)

    torch.manual_seed(seed)
    model, preprocess, tokenizer = build_model(model_cfg, preprocess_cfg, device)
    opt = make_optimizer(model, float(s["lr"]), float(s["weight_decay"]), s["betas"], float(s["eps"]))
    if rank == 0:
        for name in (MANIFEST_FILE, WEIGHTS_FILE, CONFIG_FILE):  # an earlier run's model: never mistaken for this one's
            (out_dir / name).unlink(missing_ok=True)
        prepare_state(state_dir, identity, log, name="clip")
    if world > 1:
        dist.barrier()  # the other ranks read the state rank 0 has vetted
    step0, log_lines, running0, n_running = load_state(state_dir, model, opt, fingerprint, log)
    running = torch.full((), running0, dtype=torch.float64, device=device)  # summed on the device: no per-step sync
    net = model
    if world > 1:  # DDP starts every rank from rank 0's parameters and averages the gradients
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = make_loss(rank, world)

    log_path = out_dir / LOG_FILE
    if rank == 0:
        kept = log_path.read_text().splitlines()[:log_lines] if log_path.exists() else []
        with atomic_path(log_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
        n_params = sum(p.numel() for p in model.parameters())
        print(f"[clip] {len(pairs)} image-caption pairs ({s['caption_source']}; dropped {dict(pairs.drops)}), "
              f"{plan.batches_per_epoch} steps/epoch, {total} steps from step {step0}, warmup {warmup}, world {world}, "
              f"device {device}, {n_params:,} parameters", file=log, flush=True)
    log_every, ckpt_every = int(s["log_every"]), int(s["checkpoint_every"])
    grad_clip = float(s.get("grad_clip") or 0)
    t0 = time.perf_counter()
    data = batches(StepBatches(pairs, plan, preprocess, tokenizer), step0, total, int(s.get("workers", 0)))
    net.train()
    for step in range(step0, total):
        images, tokens = next(data)
        lr = lr_at(step, float(s["lr"]), float(s["min_lr"]), warmup, total)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = batch_loss(net, loss_fn, images.to(device, non_blocking=True), tokens.to(device, non_blocking=True), amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        running += loss.detach().double()  # every rank holds the same global loss
        n_running += 1
        last = step + 1 == total
        if (step + 1) % log_every == 0 or last:
            mean = float(running) / n_running  # the only host sync: once per log interval
            if not math.isfinite(mean):
                raise NonFiniteLoss(f"[clip] non-finite loss between steps {step + 2 - n_running} and {step + 1} "
                                    f"(lr {lr:.3g}); the last good state is in {state_dir}")
            if rank == 0:
                rec = {"step": step + 1, "epoch": round((step + 1) / plan.batches_per_epoch, 4), "loss": mean,
                       "lr": lr, "logit_scale": float(model.logit_scale.detach().exp()),
                       "samples_per_s": round(n_running * plan.batch_size / (time.perf_counter() - t0), 1)}
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log_lines += 1
                print(json.dumps(rec), file=log, flush=True)
            running.zero_()
            n_running, t0 = 0, time.perf_counter()
        if rank == 0 and (step + 1) % ckpt_every == 0 and not last:
            save_state(state_dir, model, opt, step + 1, fingerprint, log_lines, running, n_running)

    manifest = {
        **args.get("meta", {}),
        "fingerprint": digest(identity),
        "identity": identity,
        "steps": total,
        "epochs": round(total / plan.batches_per_epoch, 4),
        "samples": len(pairs),
        "dropped": dict(pairs.drops),
        "caption_source": s["caption_source"],
        "world": world,
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": s,
    }
    if rank == 0:
        losses = [json.loads(x) for x in log_path.read_text().splitlines()]
        manifest["losses"] = [{"step": r["step"], "loss": r["loss"]} for r in losses]
        manifest["final_loss"] = losses[-1]["loss"] if losses else None
        manifest["logit_scale"] = float(model.logit_scale.detach().exp())
        save_model(out_dir, model, model_cfg, preprocess_cfg)
        write_json(out_dir / MANIFEST_FILE, manifest)  # last: its presence means the model is complete
        finish_state(state_dir)  # finished: a rerun (new inputs, --forcerun) trains from scratch
    if dist.is_initialized():
        dist.barrier()
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    return read_json(Path(folder) / MANIFEST_FILE)


if __name__ == "__main__":
    from sailflow.gpu import torchrun_entry

    torchrun_entry(train)
