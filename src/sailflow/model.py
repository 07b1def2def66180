"""The assembled aligned model: frozen backbones + a trained alignment head.

    from sailflow.model import AlignedModel
    model = AlignedModel.from_run("results/demo")
    sims = model.encode_image(images) @ model.encode_text(["a red circle"]).T   # cosine similarities

``encode_image`` takes PIL images or image paths, ``encode_text`` strings; both return L2-normalised
``[B, d]``, so the model can be scored directly: ``sailflow.evaluate.tasks.run(model, task_spec)``.
``score`` gives SigLIP probabilities-as-logits: exp(logit_scale) * cos + logit_bias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from sailflow.align.heads import AlignmentHead
from sailflow.backbones import load_text, load_vision
from sailflow.data.images import image_rgb
from sailflow.io import read_json


class EmbeddingModel(Protocol):
    """What contrastive evaluation kinds (zeroshot, retrieval, Winoground, MMVP) score."""

    def encode_image(self, images) -> torch.Tensor: ...  # image paths / PIL images -> [N, D], L2-normalised
    def encode_text(self, texts: list[str]) -> torch.Tensor: ...  # strings -> [N, D], L2-normalised


class GenerativeModel(Protocol):
    """What generation-based evaluation kinds (VQA-style benchmarks) score: greedy answers."""

    def generate(self, images, prompts: list[str], max_new_tokens: int) -> list[str]: ...


def _rooted(spec: dict, root: Path) -> dict:
    """Locally built backbones are saved under results/: find them from any working directory."""
    p = Path(spec["path"])
    if "build" in spec and not p.is_absolute() and not p.exists():
        return {**spec, "path": str(root / p)}
    return spec


class AlignedModel(torch.nn.Module):
    def __init__(self, vision, text, head, device: str = "cpu"):
        super().__init__()
        self.vision, self.text, self.head = vision, text, head
        self.device = torch.device(device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu") -> "AlignedModel":
        """Load ``<run_dir>/align/{head.safetensors, config.json}`` and the backbones named there."""
        align_dir = Path(run_dir) / "align"
        cfg = read_json(align_dir / "config.json")
        root = Path(run_dir).resolve().parents[1]  # the workflow folder that holds results/
        vision = load_vision(cfg["vision"], _rooted(cfg["vision_backbone"], root), device)
        text = load_text(cfg["text"], _rooted(cfg["text_backbone"], root), device)
        return cls(vision, text, AlignmentHead.load(align_dir).to(device), device)

    @torch.no_grad()
    def encode_image(self, images, batch_size: int = 64) -> torch.Tensor:
        """PIL images, image files (paths) or encoded image bytes -> normalised ``[B, d]`` (float32, on
        the model's device)."""
        out = []
        for i in range(0, len(images), batch_size):
            chunk = [image_rgb(im) for im in images[i : i + batch_size]]
            x = torch.stack([self.vision.preprocess(im) for im in chunk]).to(self.device)
            out.append(F.normalize(self.head.encode_image(self.vision(x).float()), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> normalised ``[B, d]``."""
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(F.normalize(self.head.encode_text(self.text.encode(list(texts[i : i + batch_size])).float()), dim=-1))
        return torch.cat(out)

    def score(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) * cos + logit_bias`` for normalised embeddings: ``[Bi, Bt]``."""
        return self.head.logit_scale.exp() * image_emb @ text_emb.T + self.head.logit_bias
