"""Evaluation tasks as configured under ``eval_tasks:``: load the set from disk, score a model.

A task entry has a ``kind`` and the paths of its data:

    zeroshot     folder (class sub-folders) or csv (path,label); classnames (optional: a list or
                 a named list, matched to the sorted folder names / labels); templates (a list with
                 {c} or a named set, see sailflow.evaluate.prompts)
    retrieval    format (coco | flickr), annotations (Karpathy JSON / txt), images (their folder)
    winoground   root (examples.jsonl + images/)
    mmvp         root (Questions.csv + "MLLM_VLM Images"/<Type>/)

``run(model, spec)`` works with any model that has ``encode_image(list of image paths)`` and
``encode_text(list of str)``, each returning ``[N, D]`` L2-normalised embeddings.
"""

from __future__ import annotations

from pathlib import Path

from sailflow.evaluate import datasets, mmvp, retrieval, winoground, zeroshot
from sailflow.evaluate.prompts import classnames, prompts, templates

KINDS = ("zeroshot", "retrieval", "winoground", "mmvp")
TIE_RULES = {
    "zeroshot": "equal logits: the lower class index ranks first",
    "retrieval": "equal scores: the lower image / caption index ranks first",
    "winoground": "strict >: a tie counts as wrong",
    "mmvp": "strict >: a tied statement picks image 2 (the official softmax > 0.5 test)",
}
# The "task" field of result files: CLIP_benchmark's names where its metrics are ours (so
# `clip_benchmark build` reads them); Winoground and MMVP-VLM keep their official metric names.
CLIP_BENCHMARK_TASK = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
                       "winoground": "winoground", "mmvp": "mmvp_vlm"}


def load(spec: dict, name: str = "task"):
    """The task's data: Classification, Retrieval or Pairs (paths and strings, no pixels yet)."""
    kind = spec["kind"]
    if kind == "zeroshot":
        names = classnames(spec.get("classnames"), f"eval_tasks.{name}.classnames")
        if "folder" in spec:
            data = datasets.class_folders(spec["folder"])
            if names is not None:
                if len(names) != len(data.class_names):
                    raise datasets.EvalDataError(f"{spec['folder']}: {len(data.class_names)} class folders but eval_tasks.{name}.classnames "
                                                 f"has {len(names)} names (they are matched to the sorted folder names)")
                data.class_names = list(names)
            return data
        if "csv" in spec:
            return datasets.class_csv(spec["csv"], names)
        raise ValueError(f"eval_tasks.{name}: a zeroshot task needs `folder` (class sub-folders) or `csv` (path,label)")
    if kind == "retrieval":
        loader = {"coco": datasets.coco_karpathy, "flickr": datasets.flickr_karpathy}.get(spec.get("format", "coco"))
        if loader is None:
            raise ValueError(f"eval_tasks.{name}.format must be coco or flickr, not {spec['format']!r}")
        return loader(spec["annotations"], spec["images"])
    if kind == "winoground":
        return datasets.winoground(spec["root"])
    if kind == "mmvp":
        return datasets.mmvp_vlm(spec["root"])
    raise ValueError(f"eval_tasks.{name}.kind must be one of {KINDS}, not {kind!r}")


def images_of(data) -> list[Path]:
    """Every image path the task will ask a model to encode, each once, in order."""
    if isinstance(data, datasets.Pairs):
        return list(dict.fromkeys([*data.images0, *data.images1]))
    return list(dict.fromkeys(data.images))


def texts_of(spec: dict, data, name: str = "task") -> list[str]:
    """Every text (prompt, caption, statement) the task will ask a model to encode, each once, in order."""
    if spec["kind"] == "zeroshot":
        texts = prompts(data.class_names, templates(spec["templates"], f"eval_tasks.{name}.templates"))
    elif spec["kind"] == "retrieval":
        texts = data.captions
    else:
        texts = [*data.captions0, *data.captions1]
    return list(dict.fromkeys(texts))


def run(model, spec: dict, data=None, name: str = "task", recall_k=(1, 5, 10), examples: int = 0) -> dict:
    """Score ``model`` on the task: ``{"metrics", "counts", "chance"}`` (+ ``examples`` for retrieval)."""
    data = load(spec, name) if data is None else data
    kind = spec["kind"]
    if kind == "zeroshot":
        return zeroshot.evaluate(model, data, templates(spec["templates"], f"eval_tasks.{name}.templates"))
    if kind == "retrieval":
        return retrieval.evaluate(model, data, tuple(recall_k), examples)
    if kind == "winoground":
        return winoground.evaluate(model, data)
    return mmvp.evaluate(model, data)
