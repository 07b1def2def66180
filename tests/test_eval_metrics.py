"""Evaluation metrics against hand-computed values on small matrices, ties included."""

from __future__ import annotations

import math

import pytest
import torch

from sailflow.evaluate.kinds.mmvp import mmvp_scores
from sailflow.evaluate.kinds.retrieval import retrieval_metrics
from sailflow.evaluate.kinds.winoground import winoground_scores
from sailflow.evaluate.kinds.zeroshot import classification_metrics, classifier


def test_classifier_normalises_each_prompt_then_the_mean():
    table = {"a cat": [3.0, 0.0], "the cat": [0.0, 1.0], "a dog": [1.0, 1.0], "the dog": [2.0, 2.0]}
    w = classifier(["cat", "dog"], ["a {c}", "the {c}"], lambda texts: torch.tensor([table[t] for t in texts]))
    r = 1 / math.sqrt(2)
    # cat: mean of (1, 0) and (0, 1), normalised; a plain mean of raw vectors would give (3, 1)/|.|
    torch.testing.assert_close(w[:, 0], torch.tensor([r, r]))
    torch.testing.assert_close(w[:, 1], torch.tensor([r, r]))


def test_classification_top1_top5_and_per_class_recall_with_ties():
    w = torch.eye(6)  # class c <-> axis c
    img = torch.tensor([
        [1.0, 0, 0, 0, 0, 0],   # class 0, right
        [0, 1.0, 0, 0, 0, 0],   # class 0, predicted 1
        [0, 0.5, 0.5, 0, 0, 0], # class 2: tie between 1 and 2 -> lower index 1 wins: wrong at top-1, right at top-5
        [0, 0, 0, 0, 0, 1.0],   # class 5, right
    ])
    targets = torch.tensor([0, 0, 2, 5])
    m = classification_metrics(img, w, targets)
    assert m["acc1"] == pytest.approx(2 / 4)
    assert m["acc5"] == pytest.approx(4 / 4)  # sample 1: class 0 is among the 5 best (ties by index)
    assert m["mean_per_class_recall"] == pytest.approx((1 / 2 + 0 + 1) / 3)  # classes 0, 2, 5 occur
    assert math.isnan(classification_metrics(img[:, :3], torch.eye(3), torch.tensor([0, 0, 2, 1]))["acc5"])


def test_retrieval_with_unequal_caption_counts_and_ties():
    # 3 images; captions 0,1 -> image 0; caption 2 -> image 1; captions 3,4,5 -> image 2
    text_image = torch.tensor([0, 0, 1, 2, 2, 2])
    scores = torch.tensor([
        [0.9, 0.1, 0.0],  # t0: image 0 first (hit@1)
        [0.2, 0.8, 0.1],  # t1: image 1 first, image 0 second
        [0.5, 0.5, 0.0],  # t2: tie between 0 and 1 -> image 0 ranks first: miss@1, hit@5
        [0.0, 0.0, 0.7],  # t3 hit@1
        [0.3, 0.2, 0.1],  # t4: image 2 last
        [0.0, 0.9, 0.1],  # t5: image 2 second
    ])
    m = retrieval_metrics(scores, text_image, ks=(1, 2))
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 6)  # text -> image
    assert m["image_retrieval_recall@2"] == pytest.approx(5 / 6)  # t4 misses at 2
    # image 0's captions ranked by score: t0 .9, t2 .5, t4 .3 -> hit@1
    # image 1's: t5 .9, t1 .8, t2 .5 -> its caption t2 is third: miss@2
    # image 2's: t3 .7, t5 .1 vs t1 .1 (tie: t1 first) -> t3 hit@1
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)  # image -> text
    assert m["text_retrieval_recall@2"] == pytest.approx(2 / 3)


def test_winoground_strict_ties_count_wrong():
    s = torch.tensor([
        [[0.9, 0.1], [0.2, 0.8]],  # all right
        [[0.9, 0.95], [0.2, 0.8]], # text: s(c1,i1)=.8 > s(c0,i1)=.95 fails; image: .9 > .95 fails
        [[0.5, 0.1], [0.5, 0.8]],  # text: 0.5 > 0.5 tie -> wrong; image: 0.5>0.1 and 0.8>0.5 -> right
        [[0.1, 0.9], [0.9, 0.1]],  # all wrong
    ])
    m = winoground_scores(s)
    assert (m["text"], m["image"], m["group"]) == (0.25, 0.5, 0.25)


def test_mmvp_pair_needs_both_statements_and_a_tie_picks_image_two():
    s = torch.tensor([
        [[0.9, 0.1], [0.2, 0.8]],  # both right
        [[0.9, 0.1], [0.9, 0.1]],  # statement 2 picks image 1: pair wrong
        [[0.5, 0.5], [0.1, 0.9]],  # statement 1 ties -> image 2: pair wrong
        [[0.6, 0.5], [0.5, 0.5]],  # statement 2 ties -> image 2 (right): pair right
    ])
    m = mmvp_scores(s, ["Color", "Color", "Spatial", "Spatial"])
    assert m == {"average": 0.5, "pattern/Color": 0.5, "pattern/Spatial": 0.5}
    m = mmvp_scores(s[:3], ["Color", "Color", "Spatial"])  # average = mean over patterns, not over pairs
    assert m["average"] == pytest.approx((0.5 + 0.0) / 2) and m["pattern/Spatial"] == 0.0
