"""Winoground scores (Thrush et al. 2022), strict inequalities: a tie counts as wrong.

``s[k, c, i]`` = score of caption c with image i for example k (c, i in {0, 1}; caption k
belongs to image k):
    text   s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)
    image  s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0)
    group  text and image
"""

from __future__ import annotations

import torch


def winoground_scores(s: torch.Tensor) -> dict:
    """``s``: ``[N, 2, 2]`` caption x image scores. Returns fractions of examples."""
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    group = text & image
    return {"text": float(text.float().mean()), "image": float(image.float().mean()),
            "group": float(group.float().mean()), "examples": int(s.shape[0])}
