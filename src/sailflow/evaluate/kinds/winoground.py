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
REPORT_EXAMPLES = 8  # examples (spread over the set) kept in the result for the report


def winoground_outcomes(s: torch.Tensor) -> dict[str, torch.Tensor]:
    """``s``: ``[N, 2, 2]`` caption x image scores -> ``text``, ``image``, ``group``: ``[N]`` bool."""
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    return {"text": text, "image": image, "group": text & image}


def winoground_scores(s: torch.Tensor, groups: list[str] | None = None) -> dict:
    """``s``: ``[N, 2, 2]`` caption x image scores. Fractions of examples, overall and (when
    ``groups`` is given, e.g. Winoground's collapsed_tag) per group as ``text/<group>`` etc."""
    scores = winoground_outcomes(s)
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


def pair_examples(s: torch.Tensor, data: Pairs, outcomes: dict[str, torch.Tensor], n: int = REPORT_EXAMPLES) -> list[dict]:
    """``n`` examples spread evenly over the set, for the report: both images and captions, the
    ``tag`` (Winoground's collapsed_tag, MMVP's pattern), the ``[2, 2]`` caption x image scores and
    each outcome (True: counted as correct)."""
    import torch

    picks = torch.linspace(0, len(s) - 1, min(n, len(s))).round().long().unique().tolist() if len(s) else []
    return [{"images": [str(data.images0[k]), str(data.images1[k])], "captions": [data.captions0[k], data.captions1[k]],
             "tag": data.groups[k], "scores": s[k].tolist(), **{name: bool(v[k]) for name, v in outcomes.items()}}
            for k in picks]


def evaluate(model, data: Pairs) -> dict:
    """Metrics, with chance per metric (per-group metrics have their overall metric's chance), and
    ``examples`` for the report (see :func:`pair_examples`)."""
    return scored(pair_scores(model, data), data)


def scored(s: torch.Tensor, data: Pairs) -> dict:
    """:func:`evaluate`'s result from any ``[N, 2, 2]`` caption x image scores of ``data`` (cosine
    similarities, VQAScores, ...)."""
    metrics = winoground_scores(s, data.groups)
    return {"metrics": metrics,
            "counts": {"examples": len(data.images0)}, "chance": {k: CHANCE[k.split("/")[0]] for k in metrics},
            "examples": pair_examples(s, data, winoground_outcomes(s))}


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
