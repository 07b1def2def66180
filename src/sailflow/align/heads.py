"""SAIL alignment heads: a small trainable layer per modality over frozen embeddings.

State-dict keys match SAIL's released heads (``vision_layer_norm.*``, ``vision_mapping_network.*``,
``text_layer_norm.*``, ``text_mapping_network.*``, ``logit_scale``, ``logit_bias``), so a converted
SAIL checkpoint loads strictly (see :mod:`sailflow.align.convert`).

    star    LayerNorm(D) -> g(ReLU6(clamp(f1 x)) * clamp(f2 x)), hidden width = width_factor * D
    mlp     LayerNorm(D) -> Linear(D, 4D) -> GELU -> Linear(4D, d)
    linear  LayerNorm(D) -> Linear(D, d)                      (alignment probing)

Init as SAIL: xavier-uniform weights, zero biases, LayerNorm (1, 0), logit_scale = log(scale_init)
(clamped to [0, ln 100] after every optimizer step by the trainer), logit_bias = bias_init.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)


class StarMLP(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, width_factor: int = 8):
        super().__init__()
        hidden = width_factor * dim_in
        self.f1 = nn.Linear(dim_in, hidden)
        self.f2 = nn.Linear(dim_in, hidden)
        self.g = nn.Linear(hidden, dim_out)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.f1(x).clamp(-1e3, 1e3)
        x2 = self.f2(x).clamp(-1e3, 1e3)
        return self.g(self.act(x1) * x2)


class MLP(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, 4 * dim_in)
        self.fc2 = nn.Linear(4 * dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def mapping(kind: str, dim_in: int, dim_out: int, width_factor: int) -> nn.Module:
    if kind == "star":
        return StarMLP(dim_in, dim_out, width_factor)
    if kind == "mlp":
        return MLP(dim_in, dim_out)
    if kind == "linear":
        return nn.Linear(dim_in, dim_out)
    raise ValueError(f"unknown head {kind!r}; choose star, mlp or linear")


class AlignmentHead(nn.Module):
    """Maps vision ``[B, Dv]`` and text ``[B, Dt]`` embeddings into a shared ``[B, d]`` space."""

    def __init__(self, vision_dim: int, text_dim: int, dim: int = 1024, head: str = "star", width_factor: int = 8,
                 logit_scale: float = 20.0, logit_bias: float = -10.0):
        super().__init__()
        self.config = dict(vision_dim=vision_dim, text_dim=text_dim, dim=dim, head=head, width_factor=width_factor,
                           logit_scale=logit_scale, logit_bias=logit_bias)
        self.vision_layer_norm = nn.LayerNorm(vision_dim)
        self.vision_mapping_network = mapping(head, vision_dim, dim, width_factor)
        self.text_layer_norm = nn.LayerNorm(text_dim)
        self.text_mapping_network = mapping(head, text_dim, dim, width_factor)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(logit_scale)))
        self.logit_bias = nn.Parameter(torch.full((1,), float(logit_bias)))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised ``[B, d]``; input cast to the head's dtype."""
        return self.vision_mapping_network(self.vision_layer_norm(x.to(self.logit_scale.dtype)))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_mapping_network(self.text_layer_norm(x.to(self.logit_scale.dtype)))

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def save(self, align_dir: str | Path, info: dict | None = None) -> None:
        """Write ``head.safetensors`` (the state dict) and ``config.json`` (``{"head": constructor
        arguments, **info}``: settings, backbones, training results), each atomically."""
        from safetensors.torch import save_file

        from sailflow.io import atomic_path, write_json

        align_dir = Path(align_dir)
        with atomic_path(align_dir / HEAD_FILE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"format": "sailflow-alignment-head"})
        write_json(align_dir / CONFIG_FILE, {"head": self.config, **(info or {})})

    @classmethod
    def load(cls, align_dir: str | Path) -> "AlignmentHead":
        """The head saved by :meth:`save` in ``align_dir`` (strictly: every key, every shape), in eval mode."""
        from safetensors.torch import load_file

        from sailflow.io import read_json

        align_dir = Path(align_dir)
        head = cls(**read_json(align_dir / CONFIG_FILE)["head"])
        head.load_state_dict(load_file(str(align_dir / HEAD_FILE)), strict=True)
        return head.eval()


HEAD_FILE, CONFIG_FILE = "head.safetensors", "config.json"
