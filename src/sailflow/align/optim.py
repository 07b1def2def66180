"""Optimisers and the learning-rate schedule for alignment tuning.

Lion (Chen et al. 2023), as in SAIL: p <- p * (1 - lr * wd); c = b1 * m + (1 - b1) * g;
p <- p - lr * sign(c); m <- b2 * m + (1 - b2) * g. Unlike SAIL's reference, weight decay is not
applied to LayerNorms, biases, logit_scale and logit_bias (configurable: ``decay_all``).
Schedule: linear warmup then cosine to 0, evaluated per step (``lr_at``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                update = m.mul(b1).add_(p.grad, alpha=1 - b1).sign_()
                p.add_(update, alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Two groups: decayed weight matrices, and (unless ``decay_all``) undecayed norms/biases/logits."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "norm" in name or name.endswith("bias") or "logit_" in name
        (no_decay if exempt and not decay_all else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, betas=(0.9, 0.99), decay_all: bool = False):
    groups = param_groups(model, weight_decay, decay_all)
    if name == "lion":
        return Lion(groups, lr=lr, betas=tuple(betas))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=1e-8)
    raise ValueError(f"unknown optimizer {name!r}; choose lion or adamw")


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``base_lr`` to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base_lr
