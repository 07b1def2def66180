"""Quilt-VQA (Quilt-LLaVA's quilt_eval.py): the OPEN metrics, the CLOSED yes/no parse, and the benchmark
kind read from tiny fixture files, every value computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sailflow.llava.benchmarks import BenchmarkError, check_spec, load_items, prompt_settings, score, spec_files
from sailflow.llava.scorers import pope_parse, quilt_closed_parse, quilt_normalize, quilt_open_scores

# ---- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The Nucleus.", "nucleus"),  # case, article, final period
    ("A, B and C", "b and c"),  # "A" is an article once lower-cased; ", " deletes the comma
    ("1,000 cells", "1000 cells"),  # digit-comma-digit: every mark is deleted
    ("H&E-stained", "h&e stained"),  # a '-' between letters becomes a space; '&' is not in the list
    ("(left) lobe", "left lobe"),
    ("3.5 mm.", "3.5 mm"),  # a period before a digit stays
    ("Two.", "2"), ("None", "0"),  # number words
    ("isnt", "isn't"),  # contractions
    ("another cell", "another cell"),  # only whole-word articles go
    ("", ""), ("  The.  ", ""),
])
def test_quilt_normalize(text, expected):
    assert quilt_normalize(text) == expected


# ---- OPEN questions --------------------------------------------------------------------------------


def _open(pred, gold):
    s = quilt_open_scores(pred, gold)
    return s["exact_match"], s["precision"], s["recall"], s["f1"]


@pytest.mark.parametrize("pred, gold, expected", [
    ("Lymphocytes.", "lymphocytes", (1, 1, 1, 1)),  # case and punctuation normalised away
    ("Two.", "2", (1, 1, 1, 1)),
    # extra words: "this is squamous cell carcinoma of lung" (7 words, 3 in the gold)
    ("This is a squamous cell carcinoma of the lung.", "Squamous cell carcinoma", (3 / 7, 3 / 7, 1, 0.6)),
    # fewer words: "exact match" counts distinct gold words found over the *prediction's* length
    ("carcinoma", "squamous cell carcinoma", (1, 1, 1 / 3, 0.5)),
    # a repeated predicted word counts by its repeats in tp (recall 3/4, not the usual 1/2)
    ("cell cell cell", "cell nucleus", (1 / 3, 1, 3 / 4, 6 / 7)),
    # a repeated gold word found once: tp = 1 (the prediction's count), fn = 1 ("nucleus") -> recall 1/2
    ("cell", "cell cell nucleus", (1, 1, 1 / 2, 2 / 3)),
    ("granuloma", "lymphocytes", (0, 0, 0, 0)),  # no overlap
    ("", "lymphocytes", (0, 0, 0, 0)),  # empty prediction
    ("The.", "lymphocytes", (0, 0, 0, 0)),  # nothing left after normalisation
    ("cells", "", (0, 0, 0, 0)),  # empty gold
    ("cells", "the", (0, 0, 0, 0)),
])
def test_quilt_open_scores(pred, gold, expected):
    assert _open(pred, gold) == pytest.approx(expected)


# ---- CLOSED questions ------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, expected", [
    ("Yes.", "yes"), ("yes", "yes"), ("YES!", "yes"),
    ("No.", "no"), ("no", "no"), ("NO!", "no"),  # lower-cased and normalised before the parse
    ("Not sure", "no"),  # POPE's own parser needs a lower-case "not": pope_parse gives 'yes'
    ("Yes. There is no necrosis.", "no"),  # the whole text, not its first sentence
    ("No, it is benign.", "no"),
    ("", "yes"), ("Nope", "yes"), ("I cannot tell", "yes"),  # anything without no/not is 'yes'
    ("None", "yes"),  # "none" is the number word 0
])
def test_quilt_closed_parse(pred, expected):
    assert quilt_closed_parse(pred) == expected


def test_pope_parse_whole_text_option():
    text = "Yes. There is no necrosis."
    assert pope_parse(text) == "yes"  # LLaVA's POPE: first sentence only (unchanged default)
    assert pope_parse(text, first_sentence=False) == "no"
    assert pope_parse("No.", first_sentence=False) == "yes"  # raw "No." is not the word "No": Quilt normalises first
    assert quilt_closed_parse("No.") == "no"


# ---- the benchmark kind ----------------------------------------------------------------------------


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOLD = [  # the gold file's order differs from the question file's and the answers'
    {"id": 10, "answer": "Yes, keratin pearls are present.", "answer_type": "CLOSED", "yes_no_answer": "Yes"},
    {"id": 20, "answer": "two nuclei", "answer_type": "other"},
    {"id": 30, "answer": "Squamous cell carcinoma.", "answer_type": "OPEN"},
    {"id": 40, "answer": "No, the margins are clear.", "answer_type": "CLOSED", "yes_no_answer": "no"},
    {"id": 50, "answer": "Yes.", "answer_type": "CLOSED"},  # no yes_no_answer: the normalised answer
    {"id": 60, "answer": "Lymphocytes", "answer_type": "OPEN"},
    {"id": 99, "answer": "unused", "answer_type": "OPEN"},  # not in the question file: ignored
]
ORDER = [30, 10, 20, 40, 50, 60]  # the question file
PREDS = {  # the answers file, in this (shuffled) order
    60: "lymphocytes lymphocytes",  # exact 1/2, P 1, R 1, F1 1
    40: "No, it is benign.",  # no: right
    10: "Yes.",  # yes: right
    30: "This is a squamous cell carcinoma of the lung.",  # exact 3/7, P 3/7, R 1, F1 0.6
    50: "Yes. There is no necrosis.",  # no (whole text): wrong
    20: "Two.",  # "2" vs "2 nuclei": exact 1, P 1, R 1/2, F1 2/3
}


def _quilt(tmp_path: Path, gold: list | None = None) -> dict:
    (tmp_path / "img").mkdir()
    for q in ORDER:
        Image.new("RGB", (4, 4), (200, 120, 180)).save(tmp_path / "img" / f"{q}.png")
    questions = _jsonl(tmp_path / "q.jsonl", [{"question_id": q, "image": f"{q}.png", "text": f"Question {q}?"} for q in ORDER])
    (tmp_path / "gold.json").write_text(json.dumps(GOLD if gold is None else gold))
    return {"kind": "quilt_vqa", "questions": questions, "images": str(tmp_path / "img"),
            "annotations": str(tmp_path / "gold.json")}


def _answers(preds: dict) -> list[dict]:
    return [{"question_id": q, "prompt": f"Question {q}?", "text": t} for q, t in preds.items()]


def test_spec_keys_and_defaults():
    spec = {"kind": "quilt_vqa", "questions": "q", "images": "i", "annotations": "a"}
    check_spec(spec, "quilt")
    assert prompt_settings(spec) == {"suffix": "", "max_new_tokens": 1024}  # model_vqa: the text as is, 1024 tokens
    assert spec_files(spec) == ["q", "i", "a"]
    with pytest.raises(BenchmarkError, match=r"llava_eval_tasks\.quilt\.annotations: missing"):
        check_spec({"kind": "quilt_vqa", "questions": "q", "images": "i"}, "quilt")


def test_quilt_vqa_scores_joined_by_id(tmp_path):
    spec = _quilt(tmp_path)
    items = load_items(spec, "quilt")
    assert [it.question_id for it in items] == ORDER and items[0].question == "Question 30?"
    r = score(spec, "quilt", items, _answers(PREDS), tmp_path / "out")
    m = r["metrics"]
    assert m["exact_match/open"] == pytest.approx((3 / 7 + 1 + 1 / 2) / 3)  # 9/14
    assert m["precision/open"] == pytest.approx((3 / 7 + 1 + 1) / 3)  # 17/21
    assert m["recall/open"] == pytest.approx((1 + 1 / 2 + 1) / 3)  # 5/6
    assert m["f1/open"] == pytest.approx((0.6 + 2 / 3 + 1) / 3)  # 34/45, the mean of per-question F1
    assert m["accuracy/closed"] == pytest.approx(2 / 3)
    assert set(m) == {"exact_match/open", "precision/open", "recall/open", "f1/open", "accuracy/closed"}
    # chance: only the closed accuracy has one, the majority rate (2 of the 3 gold answers are yes)
    assert r["chance"] == {"accuracy/closed": pytest.approx(2 / 3)}
    assert r["counts"] == {"questions": 6, "open": 3, "closed": 3, "closed_yes": 2}
    assert r["files"] == [] and (tmp_path / "out").is_dir()
    ex = {e["question_id"]: e for e in r["examples"]}
    assert (ex[30]["gold"], ex[30]["score"]) == ("Squamous cell carcinoma.", 1.0)  # open: recall
    assert (ex[20]["gold"], ex[20]["score"]) == ("two nuclei", 0.5)
    assert (ex[50]["gold"], ex[50]["score"]) == ("yes", 0.0)
    assert (ex[10]["gold"], ex[10]["score"]) == ("yes", 1.0)  # yes_no_answer "Yes" read case-insensitively
    assert ex[60]["answer"] == "lymphocytes lymphocytes" and ex[60]["image"] == str(tmp_path / "img" / "60.png")


def test_majority_chance_when_no_is_commoner(tmp_path):
    gold = [{**g, "yes_no_answer": "no"} if g["id"] == 10 else g for g in GOLD]
    spec = _quilt(tmp_path, gold)
    r = score(spec, "quilt", load_items(spec, "quilt"), _answers(PREDS), tmp_path / "out")
    assert r["chance"]["accuracy/closed"] == pytest.approx(2 / 3)  # 2 no, 1 yes
    assert r["metrics"]["accuracy/closed"] == pytest.approx(1 / 3)  # "Yes." to 10 is now wrong; 40 right; 50 wrong
    assert r["counts"]["closed_yes"] == 1


def test_only_open_questions_have_no_closed_metric(tmp_path):
    spec = _quilt(tmp_path, [g for g in GOLD if g["answer_type"] != "CLOSED"] + [
        {"id": q, "answer": "cells", "answer_type": "OPEN"} for q in (10, 40, 50)])
    r = score(spec, "quilt", load_items(spec, "quilt"), _answers(PREDS), tmp_path / "out")
    assert "accuracy/closed" not in r["metrics"] and r["chance"] == {}
    assert r["counts"]["open"] == 6 and r["counts"]["closed"] == 0
    assert r["metrics"]["recall/open"] == pytest.approx((1 + 1 / 2 + 1 + 0 + 0 + 0) / 6)


def test_answers_file_must_answer_every_question_once(tmp_path):
    spec = _quilt(tmp_path)
    items = load_items(spec, "quilt")
    src = tmp_path / "run.answers.jsonl"
    missing = {q: t for q, t in PREDS.items() if q != 40}
    with pytest.raises(BenchmarkError, match=r"run\.answers\.jsonl: 1 question\(s\) not answered \(first: \[40\]\)"):
        score(spec, "quilt", items, _answers(missing), tmp_path / "out", answers_path=src)
    with pytest.raises(BenchmarkError, match=r"run\.answers\.jsonl: 1 answer\(s\) to questions not in the question file "
                                             r"\(first: \[77\]\)"):
        score(spec, "quilt", items, _answers({**PREDS, 77: "yes"}), tmp_path / "out", answers_path=src)
    twice = _answers(PREDS) + [{"question_id": 10, "prompt": "", "text": "No"}]
    with pytest.raises(BenchmarkError, match=r"run\.answers\.jsonl: 1 answer\(s\) to a question answered before "
                                             r"\(first: \[10\]\)"):
        score(spec, "quilt", items, twice, tmp_path / "out", answers_path=src)
    assert not (tmp_path / "out").exists()  # nothing written when a check fails


@pytest.mark.parametrize("gold, message", [
    ([g for g in GOLD if g["id"] != 60], r"gold\.json: no gold answer for question 60 of .*q\.jsonl"),
    (GOLD + [{"id": 20, "answer": "x", "answer_type": "OPEN"}], r"gold\.json, entry 7 \(id 20\): id 20 appears twice"),
    ([{**g, "answer_type": "open"} if g["id"] == 30 else g for g in GOLD],
     r"gold\.json, entry 2 \(id 30\): answer_type 'open' is not OPEN, other or CLOSED"),
    ([{**g, "yes_no_answer": "maybe"} if g["id"] == 40 else g for g in GOLD],
     r"gold\.json, entry 3 \(id 40\): a CLOSED question's answer must be yes or no, not 'maybe'"),
    ([{k: v for k, v in g.items() if k != "answer"} if g["id"] == 20 else g for g in GOLD],
     r"gold\.json, entry 1 \(id 20\): no 'answer'"),
    ([{k: v for k, v in g.items() if k != "id"} if g["id"] == 30 else g for g in GOLD], r"gold\.json, entry 2: no 'id'"),
    ({"data": GOLD}, r"gold\.json: expected a JSON array of Quilt-VQA gold answers"),
])
def test_bad_gold_file_names_the_file_and_id(tmp_path, gold, message):
    spec = _quilt(tmp_path, gold)
    items = load_items(spec, "quilt")
    with pytest.raises(BenchmarkError, match=message):
        score(spec, "quilt", items, _answers(PREDS), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicate_question_id_in_the_question_file(tmp_path):
    spec = _quilt(tmp_path)
    _jsonl(Path(spec["questions"]), [{"question_id": 10, "image": "10.png", "text": t} for t in ("A?", "B?")])
    with pytest.raises(BenchmarkError, match=r"q\.jsonl: question 10 appears twice"):
        load_items(spec, "quilt")
