"""MMVP-VLM (Tong et al. 2024), the official rule: for a pair of images and their two statements,
each statement picks image 1 iff its score with image 1 is strictly greater (a tie picks image 2,
as the official softmax > 0.5 test does). A pair counts only if both statements pick their own
image. Accuracy per visual pattern, and ``average`` = the mean over patterns (fractions; SAIL and
the paper print percentages). Chance: 1/4 per pair.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from sailflow.evaluate import datasets
from sailflow.evaluate.datasets import MMVP_IMAGE_FOLDER, Pairs
from sailflow.evaluate.kinds import TaskKind
from sailflow.evaluate.kinds.winoground import pair_examples, pair_images, pair_scores, pair_texts

if TYPE_CHECKING:
    import torch


def mmvp_correct(s: torch.Tensor) -> torch.Tensor:
    """``s``: ``[P, 2, 2]`` statement x image scores -> ``[P]`` bool: both statements pick their own image."""
    pick1_for_1 = s[:, 0, 0] > s[:, 0, 1]  # statement 1 picks image 1
    pick1_for_2 = s[:, 1, 0] > s[:, 1, 1]  # statement 2 picks image 1 (wrong)
    return pick1_for_1 & ~pick1_for_2


def mmvp_scores(s: torch.Tensor, patterns: list[str]) -> dict:
    """``s``: ``[P, 2, 2]`` statement x image scores per pair (statement k belongs to image k);
    ``patterns[p]``: the pair's visual pattern. Returns per-pattern and average accuracy (0-1)."""
    correct = mmvp_correct(s)
    by = defaultdict(list)
    for ok, p in zip(correct.tolist(), patterns):
        by[p].append(ok)
    per = {p: sum(v) / len(v) for p, v in by.items()}
    return {"average": sum(per.values()) / len(per), **{f"pattern/{p}": v for p, v in per.items()}}


def evaluate(model, data: Pairs) -> dict:
    """Metrics, chance per metric (1/4 for each pattern and the average) and, for the report,
    ``examples``: a few pairs spread over the set with their scores and ``correct``."""
    s = pair_scores(model, data)
    metrics = mmvp_scores(s, data.groups)
    return {"metrics": metrics,
            "counts": {"pairs": len(data.images0), "patterns": len(set(data.groups))}, "chance": {k: 0.25 for k in metrics},
            "examples": pair_examples(s, data, {"correct": mmvp_correct(s)})}


KIND = TaskKind(
    name="mmvp",
    keys={"root": 'Questions.csv + "MLLM_VLM Images"/<Type>/<id>.jpg (HF MMVP/MMVP_VLM)'},
    required=("root",),
    files=lambda spec: [f"{spec['root']}/Questions.csv", f"{spec['root']}/{MMVP_IMAGE_FOLDER}"],
    load=lambda spec, name: datasets.mmvp_vlm(spec["root"]),
    images=pair_images,
    texts=pair_texts,
    score=lambda model, spec, data, name, settings: evaluate(model, data),
    tie_rule="strict >: a tied statement picks image 2 (the official softmax > 0.5 test)",
    result_task="mmvp_vlm",
)
