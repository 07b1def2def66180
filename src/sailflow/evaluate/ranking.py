"""Deterministic ranking shared by the tasks: order by score descending, ties by lower index
(a stable sort). ``torch.topk`` leaves the order of ties unspecified; this does not."""

from __future__ import annotations

import torch


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[Q, k]`` column indices of the k best scores per row; equal scores: lower index first."""
    k = min(k, scores.shape[1])
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
