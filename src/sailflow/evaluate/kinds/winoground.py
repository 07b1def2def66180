"""Winoground scores (Thrush et al. 2022), strict inequalities: a tie counts as wrong.

``s[k, c, i]`` = score of caption c with image i for example k (c, i in {0, 1}; caption k
belongs to image k):
    text   s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)
    image  s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0)
    group  text and image
Chance: 1/4, 1/4, 1/6. The score is the model's cosine similarity (a SigLIP head's logit is an
increasing affine map of it, so every comparison comes out the same).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from sailflow.evaluate import datasets
from sailflow.evaluate.datasets import Pairs
from sailflow.evaluate.kinds import TaskKind

if TYPE_CHECKING:
    import torch

CHANCE = {"text": 1 / 4, "image": 1 / 4, "group": 1 / 6}


def winoground_scores(s: torch.Tensor, groups: list[str] | None = None) -> dict:
    """``s``: ``[N, 2, 2]`` caption x image scores. Fractions of examples, overall and (when
    ``groups`` is given, e.g. Winoground's collapsed_tag) per group as ``text/<group>`` etc."""
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    scores = {"text": text, "image": image, "group": text & image}
    out = {k: float(v.float().mean()) for k, v in scores.items()}
    if groups and len(set(groups)) > 1:
        rows = defaultdict(list)
        for n, g in enumerate(groups):
            rows[g].append(n)
        for g, idx in sorted(rows.items()):
            for k, v in scores.items():
                out[f"{k}/{g}"] = float(v[idx].float().mean())
    return out


def pair_scores(model, data: Pairs) -> torch.Tensor:
    """``[N, 2, 2]`` caption x image cosine similarities of a 2x2 set (images are encoded once each)."""
    import torch

    paths = list(dict.fromkeys([*data.images0, *data.images1]))
    row = {p: n for n, p in enumerate(paths)}
    img = model.encode_image(paths).float()
    i = torch.stack([img[[row[p] for p in data.images0]], img[[row[p] for p in data.images1]]], dim=1)  # [N, 2, D]
    t = torch.stack([model.encode_text(data.captions0).float(), model.encode_text(data.captions1).float()], dim=1)
    return t @ i.transpose(1, 2)


def evaluate(model, data: Pairs) -> dict:
    return {"metrics": winoground_scores(pair_scores(model, data), data.groups),
            "counts": {"examples": len(data.images0)}, "chance": dict(CHANCE)}


def pair_images(data: Pairs) -> list:
    return list(dict.fromkeys([*data.images0, *data.images1]))


def pair_texts(spec: dict, data: Pairs, name: str) -> list[str]:
    return list(dict.fromkeys([*data.captions0, *data.captions1]))


KIND = TaskKind(
    name="winoground",
    keys={"root": "examples.jsonl + images/<name>.png (the raw release)"},
    required=("root",),
    files=lambda spec: [f"{spec['root']}/examples.jsonl", f"{spec['root']}/images"],
    load=lambda spec, name: datasets.winoground(spec["root"]),
    images=pair_images,
    texts=pair_texts,
    score=lambda model, spec, data, name, settings: evaluate(model, data),
    tie_rule="strict >: a tie counts as wrong",
    result_task="winoground",  # its official metric names, not CLIP_benchmark's
)
