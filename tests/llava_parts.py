"""Tiny LLaVA parts for the tests: a CLIP tower, a LLaMA with a tokenizer trained here, coloured-square
images and LLaVA-format records about them, and the argument dicts of the two stages."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def make_images(root: Path, n: int = 16, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        w, h = rng.choice([(40, 40), (48, 32), (32, 48)])
        Image.new("RGB", (w, h), COLOURS[colour]).save(root / "img" / f"{i:03d}.png")
        out.append((f"img/{i:03d}.png", colour))
    return out


def make_records(root: Path, images: list[tuple[str, str]], text_only: int = 2, captions: bool = False) -> Path:
    recs = []
    for i, (path, colour) in enumerate(images):
        if captions:  # stage 1: one image-caption pair per record
            recs.append({"id": f"c{i}", "image": path, "conversations": [{"from": "human", "value": "<image>"},
                                                                           {"from": "gpt", "value": f"A {colour} square."}]})
            continue
        conv = [{"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": colour}]
        if i % 3 == 0:
            conv += [{"from": "human", "value": "Is it a square?"}, {"from": "gpt", "value": "Yes"}]
        recs.append({"id": f"r{i}", "image": path, "conversations": conv})
    for j in range(text_only):
        if captions:
            break
        recs.append({"id": f"t{j}", "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "red"}]})
    p = root / ("captions.json" if captions else "records.json")
    p.write_text(json.dumps(recs))
    return p


def texts() -> list[str]:
    words = [f"A {c} square." for c in COLOURS] + ["What colour is the square?", "Is it a square?", "Yes", "No", "Name a colour."]
    return words * 20 + ["A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                         "detailed, and polite answers to the user's questions. USER: ASSISTANT:"] * 20


def build_parts(root: Path, arch: str = "llama", image_size: int = 32, patch_size: int = 8) -> dict:
    """A tiny CLIP (for the tower: (image_size / patch_size)^2 image tokens), a tiny LLM with its
    tokenizer, images (``image_files``: their paths, in order) and records under ``root``."""
    from sailflow.backbones.tiny import build_tiny
    from sailflow.llava.tiny import build_tiny_llm, train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    clip = build_tiny("clip", root / "clip", image_size=image_size, patch_size=patch_size)
    train_tokenizer(texts(), root / "tok", vocab_size=300)
    llm = build_tiny_llm(arch, root / "llm", root / "tok", hidden_size=64, layers=2, heads=4, seed=0)
    images = make_images(root)
    return {"clip": str(clip), "llm": str(llm), "records": str(make_records(root, images)), "images": str(root), "root": root,
            "captions": str(make_records(root, images, captions=True)), "image_files": [str(root / path) for path, _ in images]}


def stage_args(parts: dict, stage: str, out_dir: Path, **settings) -> dict:
    s = dict(lr=1e-3, global_batch_size=8, per_device_batch_size=4, epochs=1, weight_decay=0.0, warmup_ratio=0.0,
             lr_scheduler="constant", max_grad_norm=1.0, max_length=256, deepspeed=None, gradient_checkpointing=False,
             group_by_modality_length=False, precision="fp32", seed=0, dataloader_workers=0, lora=None, connector_lr=None,
             tune_head=False, unlock_tower=False)
    s.update(settings)
    tower = {"kind": "clip", "name": "tiny_clip", "layer": -2,
             "backbone": {"kind": "vision", "family": "clip", "path": parts["clip"], "pooling": "pooler", "layer": -2}}
    return {"stage": stage, "out_dir": str(out_dir), "tower": tower, "image_aspect_ratio": "pad" if stage == "finetune" else "square",
            "connector": {"kind": "mlp2x_gelu"}, "llm": {"name": "tiny", "path": parts["llm"]},
            "template": "plain" if stage == "pretrain" else "v1",
            "data": [{"json": parts["captions" if stage == "pretrain" else "records"], "images": parts["images"]}],
            "on_bad_record": "error", "settings": s, "previous": None, "checkpoint_every": 2, "log_every": 1, "meta": {}}


def plain_sgd_step(model, lr: float = 0.5, clip: float | None = 1.0) -> None:
    """What one optimiser step of the tests' stage settings does by hand (plain SGD at ``lr`` after clipping
    the gradient norm at ``clip``), on the gradients already in ``model``: the reference a trained stage is
    compared with."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
