"""LLaVA-1.5 benchmarks read from their on-disk formats (tiny fixture files written here) and scored
against hand-computed metrics."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from sailflow.llava import benchmarks as bm
from sailflow.llava.benchmarks import BenchmarkError, check_spec, load_items, prompt_settings, score, spec_files
from sailflow.llava.scorers import LETTER_SUFFIX, SHORT_ANSWER_SUFFIX, VIZWIZ_SUFFIX

SHORT = SHORT_ANSWER_SUFFIX


def _png(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


def _png_bytes(colour=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path: Path, rows: list) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _json(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def _answers(texts: dict, prompts: dict | None = None) -> list[dict]:
    return [{"question_id": q, "prompt": (prompts or {}).get(q, ""), "text": t} for q, t in texts.items()]


def _answers_for(items, texts: list[str], suffix: str) -> list[dict]:
    """Answer lines as the generation code writes them (prompt = question + suffix)."""
    return [{"question_id": it.question_id, "prompt": it.question + suffix, "text": t} for it, t in zip(items, texts)]


def _vqa_answers(*answers: tuple[str, int]) -> list[dict]:
    return [{"answer": a, "answer_id": j} for a, n in answers for j in range(n)]


# ---- entries ---------------------------------------------------------------------------------------


def test_check_spec_names_the_key():
    ok = {"kind": "vqav2", "questions": "q.jsonl", "images": "img"}
    check_spec(ok, "v")
    with pytest.raises(BenchmarkError, match=r"llava_eval_tasks\.v\.kind must be one of"):
        check_spec({"kind": "vqa3"}, "v")
    with pytest.raises(BenchmarkError, match=r"llava_eval_tasks\.v\.annotation: unknown key"):
        check_spec({**ok, "annotation": "a.json"}, "v")
    with pytest.raises(BenchmarkError, match=r"llava_eval_tasks\.g\.annotations: missing"):
        check_spec({"kind": "gqa", "questions": "q.jsonl", "images": "img"}, "g")
    with pytest.raises(BenchmarkError, match=r"llava_eval_tasks\.v\.normalize: must be one of"):
        check_spec({**ok, "normalize": "lmms"}, "v")
    with pytest.raises(BenchmarkError, match=r"llava_eval_tasks\.v\.max_new_tokens"):
        check_spec({**ok, "max_new_tokens": 0}, "v")
    with pytest.raises(BenchmarkError, match=r"llava_eval_tasks\.m\.circular"):
        check_spec({"kind": "mmbench", "tsv": "a.tsv", "circular": "yes"}, "m")


def test_prompt_settings_and_files_default_to_the_reference():
    assert prompt_settings({"kind": "vqav2", "questions": "q", "images": "i"}) == {"suffix": SHORT, "max_new_tokens": 128}
    assert prompt_settings({"kind": "vizwiz", "questions": "q", "images": "i"})["suffix"] == VIZWIZ_SUFFIX
    assert prompt_settings({"kind": "mmbench", "tsv": "t"}) == {"suffix": LETTER_SUFFIX, "max_new_tokens": 1024}
    assert prompt_settings({"kind": "scienceqa", "questions": "q", "images": "i", "problems": "p"})["max_new_tokens"] == 1024
    assert prompt_settings({"kind": "seed", "questions": "q", "images": "i", "annotations": "a"})["max_new_tokens"] == 128
    pope = {"kind": "pope", "questions": "q", "images": "i", "annotations": "a", "suffix": "", "max_new_tokens": 8}
    assert prompt_settings(pope) == {"suffix": "", "max_new_tokens": 8}
    assert spec_files({"kind": "vqav2", "questions": "q", "images": "i"}) == ["q", "i"]
    assert spec_files({"kind": "mme", "questions": "q", "images": "i", "annotations": "a"}) == ["q", "i", "a"]
    assert set(bm.KINDS) == {"vqav2", "gqa", "textvqa", "vizwiz", "pope", "mmbench", "seed", "scienceqa", "mme", "quilt_vqa"}


def test_strip_suffix_removes_one_known_suffix():
    assert bm.strip_suffix("What?" + SHORT) == "What?"
    assert bm.strip_suffix("What?" + VIZWIZ_SUFFIX) == "What?"  # the longer suffix, not just its tail
    assert bm.strip_suffix("What?\nWhen the provided information is insufficient, respond with 'Unanswerable'. "
                           "Answer the question using a single word or phrase.") == "What?"
    assert bm.strip_suffix("Pick one." + LETTER_SUFFIX) == "Pick one."
    assert bm.strip_suffix("Q? Reply briefly.", " Reply briefly.") == "Q?"
    assert bm.strip_suffix("What is it?") == "What is it?"


# ---- VQAv2 -----------------------------------------------------------------------------------------


def _vqav2(tmp_path, answers_per_question=None):
    for n in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "img" / n)
    q = _jsonl(tmp_path / "q.jsonl", [
        {"question_id": 11, "image": "a.png", "text": "How many dogs?" + SHORT, "category": "default"},
        {"question_id": 12, "image": "b.png", "text": "Is it red?" + SHORT},
        {"question_id": 13, "image": "c.png", "text": "What animal?" + SHORT},
    ])
    gts = answers_per_question or {11: _vqa_answers(("2", 2), ("3", 8)), 12: _vqa_answers(("yes", 10)),
                                   13: _vqa_answers(("cat", 6), ("kitten", 4))}
    types = {11: "number", 12: "yes/no", 13: "other"}
    ann = _json(tmp_path / "ann.json", {"annotations": [{"question_id": k, "answer_type": types[k], "answers": v}
                                                        for k, v in gts.items()]})
    return {"kind": "vqav2", "questions": q, "images": str(tmp_path / "img"), "annotations": ann}


def test_vqav2_accuracy_per_answer_type_and_upload(tmp_path):
    spec = _vqav2(tmp_path)
    items = load_items(spec, "vqav2")
    assert [it.question for it in items] == ["How many dogs?", "Is it red?", "What animal?"]  # suffix stripped
    assert items[0].image == str(tmp_path / "img" / "a.png") and items[0].category == "default" and items[1].category is None
    answers = _answers_for(items, ["Two.", "Yes", "dog"], SHORT)
    r = score(spec, "vqav2", items, answers, tmp_path / "out")
    # "Two." -> "2": 2 of 10 humans -> 0.6; "Yes" -> 1.0; "dog" matches nobody -> 0
    assert r["metrics"]["accuracy"] == pytest.approx((0.6 + 1.0 + 0.0) / 3)
    assert r["metrics"]["accuracy/number"] == pytest.approx(0.6)
    assert r["metrics"]["accuracy/yes/no"] == 1.0 and r["metrics"]["accuracy/other"] == 0.0
    assert set(r["chance"]) == set(r["metrics"]) and 0 < r["chance"]["accuracy"] < 1
    assert r["counts"]["questions"] == 3
    upload = tmp_path / "out" / "vqav2_upload.json"
    assert r["files"] == [str(upload)]
    assert json.loads(upload.read_text()) == [{"question_id": 11, "answer": "2"}, {"question_id": 12, "answer": "yes"},
                                              {"question_id": 13, "answer": "dog"}]


def test_vqav2_without_annotations_only_uploads_and_covers_the_full_test_set(tmp_path):
    spec = _vqav2(tmp_path)
    del spec["annotations"]
    full = _jsonl(tmp_path / "test2015.jsonl", [{"question_id": q, "image": "a.png", "text": "?"} for q in (10, 11, 12, 13)])
    items = load_items(spec, "t")
    r = score({**spec, "upload_questions": full}, "t", items, _answers({11: "two", 12: "no", 13: "a cat"}), tmp_path / "out")
    assert r["metrics"] == {} and r["chance"] == {}
    assert json.loads(Path(r["files"][0]).read_text()) == [
        {"question_id": 10, "answer": ""}, {"question_id": 11, "answer": "2"}, {"question_id": 12, "answer": "no"},
        {"question_id": 13, "answer": "cat"}]


def test_official_normalisation_is_raw_when_humans_agree(tmp_path):
    spec = {**_vqav2(tmp_path), "normalize": "official"}
    items = load_items(spec, "t")
    r = score(spec, "t", items, _answers({11: "2", 12: "Yes.", 13: "cat"}), tmp_path / "out")
    assert r["metrics"]["accuracy/yes/no"] == 0.0  # ten identical "yes": compared raw, "Yes." does not match
    assert r["metrics"]["accuracy/number"] == pytest.approx(0.6) and r["metrics"]["accuracy/other"] == 1.0


def test_wrong_number_of_human_answers_names_the_file_and_question(tmp_path):
    spec = _vqav2(tmp_path, {11: _vqa_answers(("2", 10)), 12: _vqa_answers(("yes", 9)), 13: _vqa_answers(("cat", 10))})
    items = load_items(spec, "t")
    with pytest.raises(BenchmarkError, match=r"ann\.json: question 12 has 9 answers; VQA accuracy needs 10"):
        score(spec, "t", items, _answers({11: "2", 12: "yes", 13: "cat"}), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written when a check fails


def test_missing_image_names_the_file_and_question(tmp_path):
    spec = _vqav2(tmp_path)
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(BenchmarkError, match=r"q\.jsonl, line 2 \(question 12\): image .*b\.png not found"):
        load_items(spec, "t")


def test_duplicate_question_ids_are_refused(tmp_path):
    _png(tmp_path / "img" / "a.png")
    q = _jsonl(tmp_path / "q.jsonl", [{"question_id": 5, "image": "a.png", "text": t} for t in ("A?", "B?")])
    with pytest.raises(BenchmarkError, match=r"q\.jsonl: question 5 appears twice"):
        load_items({"kind": "vqav2", "questions": q, "images": str(tmp_path / "img")}, "t")


def test_non_json_line_names_the_file_and_line(tmp_path):
    _png(tmp_path / "img" / "a.png")
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, "image": "a.png", "text": "A?"}) + "\n\n{'question_id': 2}\n")
    with pytest.raises(BenchmarkError, match=r"q\.jsonl, line 3: not JSON"):
        load_items({"kind": "vqav2", "questions": str(q), "images": str(tmp_path / "img")}, "t")
    a = tmp_path / "answers.jsonl"
    a.write_text('{"question_id": 1, "text": "x"}\nnot json\n')
    with pytest.raises(BenchmarkError, match=r"answers\.jsonl, line 2: not JSON"):
        bm.read_answers(a)


def test_answers_must_cover_every_question_once(tmp_path):
    spec = _vqav2(tmp_path)
    items = load_items(spec, "t")
    src = tmp_path / "run.answers.jsonl"
    with pytest.raises(BenchmarkError, match=r"run\.answers\.jsonl: 2 question\(s\) not answered \(first: \[12, 13\]\)"):
        score(spec, "t", items, _answers({11: "2"}), tmp_path / "out", answers_path=src)
    with pytest.raises(BenchmarkError, match=r"1 answer\(s\) to a question answered before \(first: \[11\]\); "
                                             r"1 answer\(s\) to questions not in the question file \(first: \[99\]\)"):
        score(spec, "t", items, _answers({11: "2", 12: "y", 13: "c"}) + _answers({11: "3", 99: "x"}), tmp_path / "out",
              answers_path=src)
    assert not (tmp_path / "out").exists()


# ---- GQA, TextVQA, VizWiz --------------------------------------------------------------------------


def test_gqa_exact_match_and_predictions_file(tmp_path):
    _png(tmp_path / "img" / "n1.jpg")
    q = _jsonl(tmp_path / "q.jsonl", [{"question_id": "201", "image": "n1.jpg", "text": "Color?" + SHORT},
                                      {"question_id": "202", "image": "n1.jpg", "text": "Left or right?" + SHORT}])
    ann = _json(tmp_path / "testdev.json", {"201": {"answer": "red", "types": {"structural": "query"}},
                                            "202": {"answer": "left", "types": {"structural": "choose"}}})
    spec = {"kind": "gqa", "questions": q, "images": str(tmp_path / "img"), "annotations": ann}
    items = load_items(spec, "g")
    r = score(spec, "g", items, _answers({"201": "Red.", "202": "The left one"}), tmp_path / "out")
    assert r["metrics"] == {"accuracy": 0.5, "accuracy/choose": 0.0, "accuracy/query": 1.0}
    assert r["chance"]["accuracy"] == 0.5  # uniform over the 2 gold answers
    assert json.loads((tmp_path / "out" / "testdev_balanced_predictions.json").read_text()) == [
        {"questionId": "201", "prediction": "red"}, {"questionId": "202", "prediction": "the left one"}]


def test_textvqa_joins_on_image_and_question_line(tmp_path):
    _png(tmp_path / "train_images" / "abc.jpg")
    ocr = "\nReference OCR token: STOP, 25"
    q = _jsonl(tmp_path / "q.jsonl", [  # the question id is the image id, shared by the image's questions
        {"question_id": "abc", "image": "abc.jpg", "text": "What does the sign say?" + ocr + SHORT},
        {"question_id": "abc", "image": "abc.jpg", "text": "What is the speed limit?" + ocr + SHORT},
    ])
    ann = _json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"image_id": "abc", "question": "what is the speed limit?", "answers": ["25"] * 3 + ["25 mph"] * 7},
        {"image_id": "abc", "question": "What does the sign say?", "answers": ["stop"] * 10},
    ]})
    spec = {"kind": "textvqa", "questions": q, "images": str(tmp_path / "train_images"), "annotations": ann}
    items = load_items(spec, "tv")
    assert items[1].question == "What is the speed limit?" + ocr and items[1].extra["question"] == "What is the speed limit?"
    answers = _answers_for(items, ["STOP", "25"], SHORT)[::-1]  # any order: joined, not zipped
    r = score(spec, "tv", items, answers, tmp_path / "out")
    assert r["metrics"] == {"accuracy": pytest.approx((1.0 + 0.9) / 2)}  # "25": 3 of 10 humans -> 0.9
    assert r["files"] == [] and (tmp_path / "out").is_dir()
    with pytest.raises(BenchmarkError, match=r"not answered"):
        score(spec, "tv", items, answers[:1], tmp_path / "out")


def test_vizwiz_default_suffix_and_upload(tmp_path):
    _png(tmp_path / "test" / "VizWiz_val_0.jpg")
    q = _jsonl(tmp_path / "q.jsonl", [{"question_id": 0, "image": "VizWiz_val_0.jpg", "text": "What is this?" + VIZWIZ_SUFFIX}])
    ann = _json(tmp_path / "val.json", [{"image": "VizWiz_val_0.jpg", "question": "What is this?", "answer_type": "unanswerable",
                                         "answers": _vqa_answers(("unanswerable", 5), ("can", 5))}])
    spec = {"kind": "vizwiz", "questions": q, "images": str(tmp_path / "test"), "annotations": ann}
    items = load_items(spec, "vz")
    assert items[0].question == "What is this?"
    r = score(spec, "vz", items, _answers({0: "Unanswerable"}), tmp_path / "out")
    assert r["metrics"] == {"accuracy": 1.0, "accuracy/unanswerable": 1.0}
    upload = json.loads((tmp_path / "out" / "vizwiz_upload.json").read_text())
    assert upload == [{"image": "VizWiz_val_0.jpg", "answer": "unanswerable"}]


# ---- POPE ------------------------------------------------------------------------------------------


def test_pope_confusion_per_category_and_mean_f1(tmp_path):
    for n in ("1.jpg", "2.jpg"):
        _png(tmp_path / "val2014" / n)
    asked = [("random", "1.jpg", "dog", "yes"), ("random", "1.jpg", "cat", "no"), ("random", "2.jpg", "car", "yes"),
             ("random", "2.jpg", "tree", "no"), ("adversarial", "1.jpg", "dog", "yes"), ("adversarial", "1.jpg", "bone", "no")]
    q = _jsonl(tmp_path / "q.jsonl", [{"question_id": 100 + k, "image": img, "text": f"Is there a {o} in the image?" + SHORT,
                                       "category": c} for k, (c, img, o, _) in enumerate(asked)])
    for cat in ("random", "adversarial"):  # the annotation files number their questions from 1, as POPE's do
        _jsonl(tmp_path / "coco" / f"coco_pope_{cat}.json", [
            {"question_id": j + 1, "image": img, "text": f"Is there a {o} in the image?", "label": lab}
            for j, (_, img, o, lab) in enumerate(a for a in asked if a[0] == cat)][::-1])
    spec = {"kind": "pope", "questions": q, "images": str(tmp_path / "val2014"), "annotations": str(tmp_path / "coco")}
    items = load_items(spec, "pope")
    # random: yes->"Yes" TP, no->"Yes, there is" FP, yes->"No." FN, no->"There is not." TN; adversarial: TP, TN
    r = score(spec, "pope", items, _answers({100: "Yes", 101: "Yes, there is", 102: "No.", 103: "There is not.", 104: "yes",
                                             105: "no"}), tmp_path / "out")
    m = r["metrics"]
    assert [r["counts"][f"{k}/random"] for k in ("tp", "fp", "tn", "fn")] == [1, 1, 1, 1]
    assert [r["counts"][f"{k}/adversarial"] for k in ("tp", "fp", "tn", "fn")] == [1, 0, 1, 0]
    assert m["acc/random"] == 0.5 and m["precision/random"] == 0.5 and m["recall/random"] == 0.5 and m["f1/random"] == 0.5
    assert m["yes_ratio/random"] == 0.5 and m["f1/adversarial"] == 1.0 and m["acc/adversarial"] == 1.0
    assert m["f1"] == pytest.approx(0.75) and m["acc"] == pytest.approx(0.75)
    assert r["chance"]["f1/random"] == pytest.approx(0.5) and r["chance"]["acc"] == 0.5
    (tmp_path / "coco" / "coco_pope_adversarial.json").unlink()
    with pytest.raises(BenchmarkError, match=r"coco_pope_adversarial\.json: not found"):
        score(spec, "pope", items, _answers({q: "yes" for q in range(100, 106)}), tmp_path / "out")


# ---- MMBench ---------------------------------------------------------------------------------------


def _mmbench_tsv(path: Path, rows: list[dict] | None = None, drop: str | None = None) -> str:
    image = base64.b64encode(_png_bytes()).decode()
    rows = rows or [
        {"index": 0, "question": "Which colour?", "hint": "Look closely.", "A": "red", "B": "green", "C": "blue", "D": "pink",
         "answer": "B", "category": "colour", "l2-category": "attribute", "image": image, "split": "dev"},
        {"index": 1, "question": "Which shape?", "hint": "nan", "A": "circle", "B": "square", "C": "star", "D": None,
         "answer": "C", "category": "shape", "l2-category": "attribute", "image": "0", "split": "dev"},  # the image of row 0
    ]
    df = pd.DataFrame(rows)
    if drop:
        df = df.drop(columns=[drop])
    df.to_csv(path, sep="\t", index=False)
    return str(path)


def test_mmbench_prompt_hint_options_and_added_rotations(tmp_path):
    spec = {"kind": "mmbench", "tsv": _mmbench_tsv(tmp_path / "mmb.tsv")}
    items = load_items(spec, "mmb")
    assert [it.question_id for it in items] == [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001, 2_000_001]
    assert items[0].question == "Look closely.\nWhich colour?\nA. red\nB. green\nC. blue\nD. pink"
    assert items[4].question == "Which shape?\nA. circle\nB. square\nC. star"  # hint "nan" left out; options stop at the empty D
    assert items[1].question.endswith("\nA. green\nB. blue\nC. pink\nD. red") and items[1].extra["answer"] == "A"
    assert items[5].extra["options"] == {"A": "square", "B": "star", "C": "circle"} and items[5].extra["answer"] == "B"
    assert [it.extra["answer"] for it in items[:4]] == ["B", "A", "D", "C"]
    assert items[4].image == items[0].image == _png_bytes() and items[0].category == "colour"
    assert [it.extra["main_index"] for it in items] == [0, 0, 0, 0, 1, 1, 1]
    json.dumps([it.extra for it in items])  # serialisable

    # question 0: every rotation right; question 1: right once, wrong in its last rotation
    texts = {0: "B", 1_000_000: "A. green", 2_000_000: "(D)", 3_000_000: "The answer is C", 1: "C", 1_000_001: "B",
             2_000_001: "C"}
    r = score(spec, "mmb", items, _answers(texts), tmp_path / "out")
    assert r["metrics"]["accuracy"] == 1.0 and r["metrics"]["circular_accuracy"] == 0.5
    assert r["metrics"]["circular_accuracy/colour"] == 1.0 and r["metrics"]["circular_accuracy/shape"] == 0.0
    assert r["chance"]["accuracy"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert r["chance"]["circular_accuracy"] == pytest.approx(((1 / 4) ** 4 + (1 / 3) ** 3) / 2)
    assert r["counts"] == {"questions": 2, "rows": 7}
    pred = pd.read_csv(tmp_path / "out" / "mmbench_predictions.tsv", sep="\t")
    assert list(pred.columns) == ["index", "question", "A", "B", "C", "D", "prediction", "answer"]
    assert pred["prediction"].tolist()[:2] == ["B", "A. green"] and pred["answer"].tolist()[-1] == "A"

    single = load_items({**spec, "circular": False}, "mmb")
    assert [it.question_id for it in single] == [0, 1]
    r = score({**spec, "circular": False}, "mmb", single, _answers({0: "B", 1: "A"}), tmp_path / "out2")
    assert r["metrics"] == {"accuracy": 0.5, "accuracy/colour": 1.0, "accuracy/shape": 0.0}


def test_mmbench_keeps_the_file_s_own_rotations(tmp_path):
    image = base64.b64encode(_png_bytes()).decode()
    rows = [{"index": i, "question": "Q?", "hint": None, "A": a, "B": b, "answer": ans, "category": "c", "image": image}
            for i, a, b, ans in ((3, "x", "y", "A"), (1_000_003, "y", "x", "B"))]
    spec = {"kind": "mmbench", "tsv": _mmbench_tsv(tmp_path / "m.tsv", rows)}
    items = load_items(spec, "m")
    assert [it.question_id for it in items] == [3, 1_000_003]
    r = score(spec, "m", items, _answers({3: "A", 1_000_003: "A"}), tmp_path / "out")
    assert r["metrics"]["accuracy"] == 1.0 and r["metrics"]["circular_accuracy"] == 0.0


def test_mmbench_without_answer_column_is_refused(tmp_path):
    with pytest.raises(BenchmarkError, match=r"mmb\.tsv: no column\(s\) \['answer'\]"):
        load_items({"kind": "mmbench", "tsv": _mmbench_tsv(tmp_path / "mmb.tsv", drop="answer")}, "m")


# ---- SEED, ScienceQA, MME --------------------------------------------------------------------------


def test_seed_accuracy_by_data_type_and_upload(tmp_path):
    _png(tmp_path / "img" / "SEED-Bench-image" / "1.jpg")
    _png(tmp_path / "img" / "SEED-Bench-video-image" / "v.png")
    mc = "\nA. a\nB. b\nC. c\nD. d"
    q = _jsonl(tmp_path / "q.jsonl", [
        {"question_id": 101, "image": "SEED-Bench-image/1.jpg", "text": "What?" + mc + LETTER_SUFFIX},
        {"question_id": 102, "image": "SEED-Bench-image/1.jpg", "text": "Where?" + mc + LETTER_SUFFIX},
        {"question_id": 103, "image": "SEED-Bench-video-image/v.png", "text": "When?" + mc + LETTER_SUFFIX}])
    types = {"Scene Understanding": 1, "Action Recognition": 10}
    ann = _json(tmp_path / "SEED-Bench.json", {"question_type": types, "questions": [
        {"question_id": "101", "answer": "A", "data_type": "image", "question_type_id": 1},
        {"question_id": "102", "answer": "B", "data_type": "image", "question_type_id": 1},
        {"question_id": "103", "answer": "C", "data_type": "video", "question_type_id": 10}]})
    spec = {"kind": "seed", "questions": q, "images": str(tmp_path / "img"), "annotations": ann}
    items = load_items(spec, "seed")
    assert items[0].question == "What?" + mc
    r = score(spec, "seed", items, _answers({101: "A", 102: "B.", 103: "C"}), tmp_path / "out")
    assert r["metrics"]["accuracy"] == pytest.approx(2 / 3) and r["metrics"]["accuracy/image"] == 0.5
    assert r["metrics"]["accuracy/video"] == 1.0 and r["metrics"]["accuracy/Action Recognition"] == 1.0
    assert r["chance"]["accuracy/image"] == 0.25
    lines = [json.loads(x) for x in (tmp_path / "out" / "seed_upload.jsonl").read_text().splitlines()]
    assert lines[1] == {"question_id": "102", "prediction": "B."}


def test_scienceqa_accuracy_and_img_accuracy(tmp_path):
    _png(tmp_path / "images" / "test" / "7" / "image.png")
    q = _json(tmp_path / "llava_test_CQM-A.json", [
        {"id": "7", "image": "7/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: N/A\nQuestion: Which is a bird?\nOptions: (A) owl (B) cat"},
            {"from": "gpt", "value": "A"}]},
        {"id": "8", "conversations": [{"from": "human", "value": "Question: Which is hot?\nOptions: (A) ice (B) fire (C) snow\n"
                                                                  + LETTER_SUFFIX.strip()}]},
    ])
    problems = _json(tmp_path / "problems.json", {"7": {"choices": ["owl", "cat"], "answer": 0},
                                                  "8": {"choices": ["ice", "fire", "snow"], "answer": 1}})
    spec = {"kind": "scienceqa", "questions": q, "images": str(tmp_path / "images" / "test"), "problems": problems}
    items = load_items(spec, "sqa")
    assert items[0].question == "Context: N/A\nQuestion: Which is a bird?\nOptions: (A) owl (B) cat"
    assert items[0].image == str(tmp_path / "images" / "test" / "7" / "image.png")
    assert items[1].question == "Question: Which is hot?\nOptions: (A) ice (B) fire (C) snow" and items[1].image is None
    r = score(spec, "sqa", items, _answers({"7": "A", "8": "C"}), tmp_path / "out")
    assert r["metrics"] == {"accuracy": 0.5, "accuracy/img": 1.0}
    assert r["chance"] == {"accuracy": pytest.approx((1 / 2 + 1 / 3) / 2), "accuracy/img": 0.5}
    assert r["counts"] == {"questions": 2, "img_questions": 1}


def test_mme_scores_and_eval_tool_files(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    _png(root / "artwork" / "images" / "10.jpg")
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN" / "10.txt").write_text(
        "Is this by Monet? Please answer yes or no.\tYes\nIs this by Dali? Please answer yes or no.\tNo\n")
    _png(root / "code_reasoning" / "0020.png")
    (root / "code_reasoning" / "0020.txt").write_text(
        "Is a python code shown in the picture? Please answer yes or no.\tYes\n"
        "Is a C++ code shown in the picture? Please answer yes or no.\tNo\n")
    rows = [("artwork/10.jpg", "artwork/images/10.jpg", "Is this by Monet?"),
            ("code_reasoning/0020.png", "code_reasoning/0020.png", "Is a python code shown in the picture?"),
            ("artwork/10.jpg", "artwork/images/10.jpg", "Is this by Dali?"),
            ("code_reasoning/0020.png", "code_reasoning/0020.png", "Is a C++ code shown in the picture?")]
    q = _jsonl(tmp_path / "llava_mme.jsonl", [{"question_id": f"{qid}#{k}", "image": img, "text": text + SHORT,
                                               "category": qid.split("/")[0]} for k, (qid, img, text) in enumerate(rows)])
    spec = {"kind": "mme", "questions": q, "images": str(root)}
    items = load_items(spec, "mme")
    assert items[0].question == "Is this by Monet?" and items[1].category == "code_reasoning"
    # artwork: both right -> acc 1, acc+ 1 -> 200; code_reasoning: one of two -> acc .5, acc+ 0 -> 50
    r = score(spec, "mme", items, _answers({it.question_id: t for it, t in zip(items, ["Yes", "Yes", "No", "Yes, it is"])}),
              tmp_path / "out")
    assert r["metrics"] == {"score/artwork": 200.0, "score/code_reasoning": 50.0, "perception": 200.0, "cognition": 50.0}
    assert r["chance"] == {"score/artwork": 75.0, "score/code_reasoning": 75.0, "perception": 75.0, "cognition": 75.0}
    assert sorted(Path(f).name for f in r["files"]) == ["artwork.txt", "code_reasoning.txt"]
    assert (tmp_path / "out" / "mme" / "artwork.txt").read_text() == (
        "10.jpg\tIs this by Monet? Please answer yes or no.\tYes\tYes\n"
        "10.jpg\tIs this by Dali? Please answer yes or no.\tNo\tNo\n")
    # the official tool pairs consecutive lines: an image's questions are kept together
    lines = (tmp_path / "out" / "mme" / "code_reasoning.txt").read_text().splitlines()
    assert [x.split("\t")[0] for x in lines] == ["0020.png", "0020.png"] and lines[1].endswith("\tNo\tYes, it is")
    (root / "artwork" / "questions_answers_YN" / "10.txt").write_text("Is this by Monet? Please answer yes or no.\tYes\n")
    with pytest.raises(BenchmarkError, match=r"no answer for question 'artwork/10\.jpg#2'"):
        score(spec, "mme", items, _answers({it.question_id: "yes" for it in items}), tmp_path / "out3")
    assert not (tmp_path / "out3").exists()
