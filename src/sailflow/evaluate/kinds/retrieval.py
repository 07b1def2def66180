"""Image-text retrieval recall@k as CLIP_benchmark publishes it.

``scores[t, i]`` = similarity of caption t and image i; ``text_image[t]`` = the image of caption t
(images may have different numbers of captions). A query is a hit at k if *any* of its positives
is among its top k. CLIP_benchmark's names (fractions):
    image_retrieval_recall@k   text -> image: one query per caption, its one image among all images
    text_retrieval_recall@k    image -> text: one query per image, any of its captions among all captions
("image retrieval" = images are retrieved; the caption is the query.)
Ties: the lower index ranks first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sailflow.evaluate import datasets
from sailflow.evaluate.datasets import Retrieval
from sailflow.evaluate.kinds import TaskError, TaskKind

if TYPE_CHECKING:
    import torch


def retrieval_metrics(scores: torch.Tensor, text_image: torch.Tensor, ks=(1, 5, 10)) -> dict:
    import torch

    from sailflow.evaluate.ranking import topk_indices

    n_texts, n_images = scores.shape
    if len(text_image) != n_texts:
        raise ValueError(f"{n_texts} captions scored but {len(text_image)} caption->image indices given")
    out = {}
    kmax = max(ks)
    t2i = topk_indices(scores, kmax) == text_image[:, None]  # [T, k]
    positives = text_image[None, :] == torch.arange(n_images)[:, None]  # [I, T]
    i2t = torch.gather(positives, 1, topk_indices(scores.T, kmax))  # [I, k]
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(t2i[:, :k].any(1).float().mean())
    for k in ks:
        out[f"text_retrieval_recall@{k}"] = float(i2t[:, :k].any(1).float().mean())
    return out


def chance(text_image: torch.Tensor, n_images: int, ks=(1, 5, 10)) -> dict:
    """Expected recall of a random ranking: k/I for text->image; for image->text, 1 minus the
    probability that none of an image's n captions is among k drawn from all T, averaged."""
    import torch

    n_texts = len(text_image)
    per_image = torch.bincount(text_image, minlength=n_images).tolist()
    out = {f"image_retrieval_recall@{k}": min(k, n_images) / n_images for k in ks}
    for k in ks:
        miss = [math.prod((n_texts - n - j) / (n_texts - j) for j in range(min(k, n_texts))) for n in per_image]
        out[f"text_retrieval_recall@{k}"] = 1 - sum(miss) / n_images
    return out


def own_image_ranks(scores: torch.Tensor, text_image: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """``[T]`` 1-based rank of each caption's own image among all images, by the metrics' order
    (score descending, ties: the lower image index first): rank 1 is a hit at R@1."""
    import torch

    n_texts, n_images = scores.shape
    ranks = torch.empty(n_texts, dtype=torch.long)
    cols = torch.arange(n_images)
    for lo in range(0, n_texts, rows):  # [rows, I] comparisons at a time: COCO is 25k x 5k
        s, own = scores[lo:lo + rows], text_image[lo:lo + rows]
        own_score = s.gather(1, own[:, None])
        before = (s > own_score) | ((s == own_score) & (cols[None, :] < own[:, None]))
        ranks[lo:lo + rows] = before.sum(1) + 1
    return ranks


def worst_misses(scores: torch.Tensor, text_image: torch.Tensor, images: list, captions: list[str], n: int) -> list[dict]:
    """The ``n`` captions whose own image ranks lowest (text -> image), worst first (equal ranks:
    the lower caption index first), each with its image, that image's rank and score, and the
    top-3 images retrieved instead."""
    import torch

    from sailflow.evaluate.ranking import topk_indices

    ranks = own_image_ranks(scores, text_image)
    worst = torch.sort(ranks, descending=True, stable=True).indices[:n].tolist()
    top = topk_indices(scores[worst], 3).tolist() if worst else []
    return [{"caption": captions[t], "image": str(images[int(text_image[t])]), "rank": int(ranks[t]),
             "score": float(scores[t, text_image[t]]),
             "retrieved": [{"image": str(images[i]), "score": float(scores[t, i])} for i in ts]}
            for t, ts in zip(worst, top)]


def evaluate(model, data: Retrieval, ks=(1, 5, 10), examples: int = 0) -> dict:
    """Score ``model`` on a retrieval set. ``examples`` > 0 adds, for the report, that many images
    (spread over the set) with their captions and their top-3 retrieved captions (``examples``) and
    that many captions whose own image ranked worst (``misses``, see :func:`worst_misses`)."""
    import torch

    from sailflow.evaluate.ranking import topk_indices

    image_emb = model.encode_image(data.images)
    text_emb = model.encode_text(data.captions)
    scores = text_emb.float() @ image_emb.float().T
    text_image = torch.as_tensor(data.text_image)
    out = {"metrics": retrieval_metrics(scores, text_image, ks),
           "counts": {"images": len(data.images), "captions": len(data.captions)},
           "chance": chance(text_image, len(data.images), ks)}
    if examples:
        picks = torch.linspace(0, len(data.images) - 1, min(examples, len(data.images))).round().long().unique().tolist()
        top = topk_indices(scores.T[picks], 3).tolist()
        out["examples"] = [
            {"image": str(data.images[i]), "captions": [c for c, j in zip(data.captions, data.text_image) if j == i],
             "retrieved": [{"caption": data.captions[t], "score": round(float(scores[t, i]), 4), "correct": data.text_image[t] == i} for t in ts]}
            for i, ts in zip(picks, top)
        ]
        out["misses"] = worst_misses(scores, text_image, data.images, data.captions, examples)
    return out


LOADERS = {"coco": datasets.coco_karpathy, "flickr": datasets.flickr_karpathy}


def load(spec: dict, name: str) -> Retrieval:
    fmt = spec.get("format", "coco")
    if fmt not in LOADERS:
        raise TaskError(f"eval_tasks.{name}.format must be one of {list(LOADERS)}, not {fmt!r}")
    return LOADERS[fmt](spec["annotations"], spec["images"])


KIND = TaskKind(
    name="retrieval",
    keys={
        "format": "coco (COCO-format Karpathy JSON, default) or flickr (`<image>.jpg,<caption>` lines)",
        "annotations": "the annotation file",
        "images": "the folder its image names are relative to",
    },
    required=("annotations", "images"),
    files=lambda spec: [spec["annotations"], spec["images"]],
    load=load,
    images=lambda data: list(dict.fromkeys(data.images)),
    texts=lambda spec, data, name: list(dict.fromkeys(data.captions)),
    score=lambda model, spec, data, name, settings: evaluate(model, data, tuple(settings.get("recall_k", (1, 5, 10))),
                                                             settings.get("report_examples", 0)),
    tie_rule="equal scores: the lower image / caption index ranks first",
    result_task="zeroshot_retrieval",
    settings=("recall_k", "report_examples"),
    defaults={"format": "coco"},
)
