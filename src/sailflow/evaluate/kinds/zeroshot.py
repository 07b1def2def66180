"""Zero-shot classification as CLIP_benchmark computes it.

Classifier: for each class, embed every prompt (template filled with the class name),
L2-normalise each prompt embedding, average, L2-normalise the mean. Logits = 100 * normalised
image embeddings @ classifier (the constant does not change any metric). Metrics, with
CLIP_benchmark's names and as fractions: ``acc1``, ``acc5`` (only with >= 5 classes, else NaN), and
``mean_per_class_recall`` (sklearn's balanced accuracy: classes absent from the targets are
skipped). Ties: the lower class index ranks first (see :mod:`sailflow.evaluate.ranking`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from sailflow.evaluate import datasets
from sailflow.evaluate.kinds import TaskKind
from sailflow.evaluate.prompts import classnames, prompts, templates

if TYPE_CHECKING:
    import torch


def classifier_weights(prompt_emb: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``prompt_emb``: ``[C * T, D]`` class-major (see :func:`prompts`) -> ``[D, C]`` weights."""
    import torch.nn.functional as F

    e = F.normalize(prompt_emb.float(), dim=-1).reshape(n_classes, -1, prompt_emb.shape[-1])
    return F.normalize(e.mean(1), dim=-1).T


def classifier(class_names: list[str], templates: list[str], encode_text: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """``[D, C]`` zero-shot weights; ``templates`` use ``{c}`` (e.g. "a photo of a {c}.")."""
    return classifier_weights(encode_text(prompts(class_names, templates)), len(class_names))


def zeroshot_logits(image_emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` = ``100 * normalize(image_emb) @ weights``."""
    import torch.nn.functional as F

    return 100.0 * F.normalize(image_emb.float(), dim=-1) @ weights


def classification_metrics(image_emb: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor) -> dict:
    """acc1, acc5 and mean per-class recall of ``100 * normalize(image_emb) @ weights``."""
    from sailflow.evaluate.ranking import topk_indices

    logits = zeroshot_logits(image_emb, weights)
    n_classes = logits.shape[1]
    top = topk_indices(logits, 5)
    hit = top == targets[:, None]
    pred = top[:, 0]
    recalls = [float((pred[targets == c] == c).float().mean()) for c in range(n_classes) if bool((targets == c).any())]
    return {
        "acc1": float(hit[:, :1].any(1).float().mean()),
        "acc5": float(hit[:, :5].any(1).float().mean()) if n_classes >= 5 else math.nan,
        "mean_per_class_recall": sum(recalls) / len(recalls),
    }


def confusion_counts(image_emb: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor) -> list[list[int]]:
    """The top-1 confusion matrix as its non-zero cells ``[true class, predicted class, images]``, in
    row-major order (sparse: ImageNet's 1000 x 1000 matrix is mostly zeros). The prediction is the
    one ``acc1`` scores (same logits, same tie rule), so the cells of true class c add up to its
    number of images."""
    import torch

    from sailflow.evaluate.ranking import topk_indices

    logits = zeroshot_logits(image_emb, weights)
    c = logits.shape[1]
    pred = topk_indices(logits, 1)[:, 0]
    cells = torch.bincount(targets.long() * c + pred, minlength=c * c)
    return [[i // c, i % c, int(cells[i])] for i in torch.nonzero(cells).flatten().tolist()]


def evaluate(model, data: datasets.Classification, templates: list[str]) -> dict:
    """Score ``model`` (``encode_image(paths)``, ``encode_text(strings)``, both ``[N, D]``) on a
    classification set. Chance: 1/C at top-1 (and min(5, C)/C at top-5) for balanced classes.
    ``confusion`` (for the report): the class names and the top-1 confusion counts (:func:`confusion_counts`)."""
    import torch

    weights = classifier(data.class_names, templates, model.encode_text)
    image_emb, targets = model.encode_image(data.images), torch.as_tensor(data.labels)
    metrics = classification_metrics(image_emb, weights, targets)
    c = len(data.class_names)
    return {"metrics": metrics, "counts": {"images": len(data.images), "classes": c, "templates": len(templates)},
            "chance": {"acc1": 1 / c, "acc5": min(5, c) / c if c >= 5 else math.nan, "mean_per_class_recall": 1 / c},
            "confusion": {"classes": list(data.class_names), "counts": confusion_counts(image_emb, weights, targets)}}


def load(spec: dict, name: str) -> datasets.Classification:
    names = classnames(spec.get("classnames"), f"eval_tasks.{name}.classnames")
    if "csv" in spec:
        return datasets.class_csv(spec["csv"], names)
    data = datasets.class_folders(spec["folder"])
    if names is not None:
        if len(names) != len(data.class_names):
            raise datasets.EvalDataError(f"{spec['folder']}: {len(data.class_names)} class folders but eval_tasks.{name}.classnames "
                            f"has {len(names)} names (they are matched to the sorted folder names)")
        data.class_names = list(names)
    return data


def _texts(spec: dict, data, name: str) -> list[str]:
    return list(dict.fromkeys(prompts(data.class_names, templates(spec["templates"], f"eval_tasks.{name}.templates"))))


def _score(model, spec: dict, data, name: str, settings: dict) -> dict:
    return evaluate(model, data, templates(spec["templates"], f"eval_tasks.{name}.templates"))


KIND = TaskKind(
    name="zeroshot",
    keys={
        "folder": "class sub-folders (ImageNet val layout); classes = sorted folder names",
        "csv": "a CSV of path,label (paths relative to it)",
        "classnames": "class names in the sorted folder (or label) order: a list or a named list (imagenet1k)",
        "templates": "prompts with {c}: a list or a named set (openai_imagenet, simple_imagenet, cifar)",
    },
    required=(("folder", "csv"), "templates"),
    files=lambda spec: [spec["folder"] if "folder" in spec else spec["csv"]],
    load=load,
    images=lambda data: list(dict.fromkeys(data.images)),
    texts=_texts,
    score=_score,
    tie_rule="equal logits: the lower class index ranks first",
    result_task="zeroshot_classification",
    text_only_keys=("classnames", "templates"),
)
