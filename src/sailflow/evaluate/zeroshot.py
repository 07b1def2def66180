"""Zero-shot classification as CLIP_benchmark computes it.

Classifier: for each class, embed every prompt (template filled with the class name),
L2-normalise each prompt embedding, average, L2-normalise the mean. Logits = 100 * normalised
image embeddings @ classifier (the constant does not change any metric). Metrics: top-1, top-5
(only with >= 5 classes, else NaN), and mean per-class recall (classes absent from the targets are
skipped). Ties: the lower class index ranks first (see :mod:`sailflow.evaluate.ranking`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from sailflow.evaluate.ranking import topk_indices


def classifier(class_names: list[str], templates: list[str], encode_text: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """``[D, C]`` zero-shot weights; ``templates`` use ``{c}`` (e.g. "a photo of a {c}.")."""
    cols = []
    for name in class_names:
        e = F.normalize(encode_text([t.format(c=name) for t in templates]).float(), dim=-1)
        cols.append(F.normalize(e.mean(0), dim=-1))
    return torch.stack(cols, dim=1)


def classification_metrics(image_emb: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor) -> dict:
    """Top-1, top-5 and mean per-class recall of ``100 * normalize(image_emb) @ weights``."""
    logits = 100.0 * F.normalize(image_emb.float(), dim=-1) @ weights
    n_classes = logits.shape[1]
    top = topk_indices(logits, 5)
    hit = top == targets[:, None]
    pred = top[:, 0]
    recalls = [float((pred[targets == c] == c).float().mean()) for c in range(n_classes) if bool((targets == c).any())]
    return {
        "top1": float(hit[:, :1].any(1).float().mean()),
        "top5": float(hit[:, :5].any(1).float().mean()) if n_classes >= 5 else math.nan,
        "mean_per_class_recall": sum(recalls) / len(recalls),
        "images": int(len(targets)),
        "classes": int(n_classes),
    }
