"""LLaVA-1.5 benchmark scorers against hand-computed values and the reference test vectors."""

from __future__ import annotations

import pytest

from sailflow.llava.scorers import (
    circular_accuracy,
    evalai_normalize,
    gqa_match,
    gqa_normalize,
    mc_extract,
    mme_parse,
    mme_scores,
    mmbench_main_index,
    pope_metrics,
    pope_parse,
    seed_match,
    sqa_parse,
    vqa_accuracy,
    vqa_chance,
    vqa_normalize,
)


@pytest.mark.parametrize("text, expected", [
    # eval.md 5.2 test vectors (checked there against lmms-eval's class)
    ("Two dogs.", "2 dogs"), ("The cat", "cat"), ("Yes.", "yes"), ("3.5", "3.5"), ("1,000", "1000"),
    ("red, white", "red white"), ("left-hand", "left hand"), ("None", "0"), ("dont know", "don't know"),
    ("a man's hat", "man 's hat"),
    # edge cases
    ("", ""), ("none", "0"), ("An apple", "apple"), ("ten?", "10"), ("yes\n", "yes"), ("  Red  Car ", "red car"),
    ("(red)", "red"), ("a - b", "b"),  # '-' next to a space is deleted; "a" is an article
])
def test_evalai_normalize(text, expected):
    assert evalai_normalize(text) == expected


def test_vqa_normalize_has_no_tokenize_step():
    assert vqa_normalize("a man's hat") == "man's hat"
    assert vqa_normalize("1,000") == "1000"  # digit-comma-digit: every mark is deleted
    assert vqa_normalize("red,white") == "red white"  # no digits: ',' becomes a space
    assert vqa_normalize("Two.") == "2"
    assert vqa_normalize("what?") == "what"


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_closed_form(k, expected):
    gts = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_accuracy("cat", gts) == pytest.approx(expected)
    assert vqa_accuracy("cat", gts, normalize="official") == pytest.approx(expected)


def test_vqa_accuracy_mixed_answers():
    # normalised: "2" x3, "3" x5, "4" x2
    gts = ["Two", "2", "2.", "three", "3", "3", "3", "Three.", "4", "four"]
    assert vqa_accuracy("two", gts) == pytest.approx(0.9)
    # leave out one of the two "4"s (2x): 1/3; leave out another answer (8x): 2/3 -> (2/3 + 16/3) / 10
    assert vqa_accuracy("Four", gts) == pytest.approx(0.6)
    assert vqa_accuracy("the 3", gts) == pytest.approx(1.0)
    assert vqa_accuracy("5", gts) == 0.0
    assert vqa_accuracy("", ["", "", "x", "x", "x", "x", "x", "x", "x", "x"]) == pytest.approx(0.6)


def test_vqa_accuracy_official_normalises_only_when_answers_differ():
    same = ["yes"] * 10
    assert vqa_accuracy("Yes.", same) == 1.0
    assert vqa_accuracy("Yes.", same, normalize="official") == 0.0
    assert vqa_accuracy("yes\n", same, normalize="official") == 1.0  # newlines and spaces are always cleaned
    differ = ["yes"] * 9 + ["Yes."]
    assert vqa_accuracy("Yes", differ, normalize="official") == 1.0


def test_vqa_accuracy_rejects_wrong_answer_count():
    with pytest.raises(ValueError, match="9"):
        vqa_accuracy("yes", ["yes"] * 9)
    with pytest.raises(ValueError, match="normalize"):
        vqa_accuracy("yes", ["yes"] * 10, normalize="lmms")


def test_vqa_chance():
    # vocabulary {red, blue}. q1: red 1.0, blue 0 -> 0.5; q2: blue (8) 1.0, red (2) 0.6 -> 0.8
    q1 = ["Red"] * 5 + ["red."] * 5
    q2 = ["blue"] * 8 + ["red"] * 2
    assert vqa_chance([q1, q2]) == pytest.approx((0.5 + 0.8) / 2)


def test_gqa():
    assert gqa_normalize("Yes..") == "yes"
    assert gqa_normalize(" Left.") == " left"  # no strip: LLaVA's answers are already stripped
    assert gqa_match("Left.", "left")
    assert not gqa_match("the left", "left")


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"), ("No, there is not.", "no"), ("yes", "yes"), ("There is no dog", "no"), ("", "yes"),
    ("Yes. There is no dog.", "yes"),  # only the first sentence counts
    ("Not at all", "yes"),  # 'Not' is not in ('No', 'not', 'no')
    ("no.", "no"),
])
def test_pope_parse(text, expected):
    assert pope_parse(text) == expected


def test_pope_metrics():
    preds = ["Yes.", "No, there is not.", "yes", "There is no dog", "", "No.", "Yes"]
    labels = ["yes", "no", "no", "yes", "yes", "no", " No "]
    # parsed: yes no yes no yes no yes -> TP 2 (0, 4), FP 2 (2, 6), TN 2 (1, 5), FN 1 (3)
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 2, 1)
    assert m["acc"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)  # 2 * 1/2 * 2/3 / (1/2 + 2/3)
    assert m["yes_ratio"] == pytest.approx(4 / 7)  # over predictions (labels have 3/7 yes)
    none = pope_metrics(["no", "no"], ["yes", "no"])  # nothing predicted yes: 0.0, not a division error
    assert (none["precision"], none["recall"], none["f1"], none["acc"]) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="maybe"):
        pope_metrics(["yes"], ["maybe"])


OPTIONS = {"A": "red", "B": "blue", "C": "green"}


@pytest.mark.parametrize("answer, expected", [
    ("B", "B"), ("B.", "B"), ("(C) red", "C"), ("C: green", "C"), ("B) blue", "B"),
    ("The answer is A", "A"),
    ("A and B", None),  # two letters, and no option text
    ("It is blue", "B"), ("Blue", "B"),  # option text, case-insensitive
    ("red or blue", None),  # two texts
    ("a", None), ("b.", None),  # letters are case-sensitive, as in MMBench's can_infer_option
    ("D", None),  # not an option
    ("I'm sorry, but without the image provided I cannot say; maybe red", None),  # a refusal, though it names an option
    ("Cannot determine the answer. B", None),
])
def test_mc_extract(answer, expected):
    assert mc_extract(answer, OPTIONS) == expected


def test_circular_accuracy_and_main_index():
    assert mmbench_main_index(2_000_005) == 5
    assert mmbench_main_index(5) == 5
    assert circular_accuracy({0: [True, True, True], 1: [True, False], 5: [True]}) == pytest.approx(2 / 3)


def test_seed_match():
    assert seed_match("B", "B")
    assert seed_match("B\n", "B")  # LLaVA's loader strips the decoded text
    assert not seed_match("B.", "B")
    assert not seed_match("b", "B")


@pytest.mark.parametrize("pred, expected", [
    ("A", "A"), ("B. dog", "B"), ("The answer is C.", "C"),
    ("B.dog", "FAILED"),  # needs ". " after the letter
    ("The answer is C", "FAILED"),  # the regex wants one more character after the letter
    ("The answer is A. The answer is B.", "FAILED"),  # two matches
    ("D", "FAILED"),  # a letter beyond the 3 options is scored wrong
    ("D. The answer is B.", "FAILED"),  # step 2 takes D (checked against A-E), never the regex
    ("I think B", "FAILED"),
])
def test_sqa_parse(pred, expected):
    assert sqa_parse(pred, ["cat", "dog", "fish"]) == expected


@pytest.mark.parametrize("pred, expected", [
    ("Yes", "yes"), ("No.", "no"), ("not sure", "no"), ("eyes", "yes"), ("I think yes", "other"), ("", "other"),
])
def test_mme_parse(pred, expected):
    assert mme_parse(pred) == expected


def test_mme_scores_acc_plus():
    records = [
        {"subtask": "existence", "image": "1.jpg", "pred": "Yes", "gt": "Yes"},
        {"subtask": "existence", "image": "1.jpg", "pred": "No", "gt": "No"},
        {"subtask": "existence", "image": "2.jpg", "pred": "No", "gt": "Yes"},
        {"subtask": "existence", "image": "2.jpg", "pred": "no, it is not", "gt": "No"},
        {"subtask": "code_reasoning", "image": "c.png", "pred": "Maybe", "gt": "Yes"},
        {"subtask": "code_reasoning", "image": "c.png", "pred": "No", "gt": "No"},
    ]
    s = mme_scores(records)
    assert s["subtasks"]["existence"] == pytest.approx(3 / 4 * 100 + 1 / 2 * 100)
    assert s["subtasks"]["code_reasoning"] == pytest.approx(50.0)  # acc 1/2, acc+ 0
    assert s["perception"] == pytest.approx(125.0)
    assert s["cognition"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="ocr"):
        mme_scores([{"subtask": "ocr", "image": "x", "pred": "yes", "gt": "Yes"}])
