"""LLaVA-1.5's benchmark suite, read from the files users already have (the question files of LLaVA's
``eval.zip`` plus each benchmark's official annotations) and scored with the official rules
(:mod:`sailflow.llava.scorers`). Torch-free: the workflow checks entries and plans with it.

A ``llava_eval_tasks:`` entry is ``{"kind": <kind>, <that kind's keys>}`` (``KINDS`` lists them):

    kind       questions (load_items)                 scored against (score)                    writes into out_dir
    vqav2      questions JSONL + images               annotations (optional, official VQAv2)    vqav2_upload.json (EvalAI)
    gqa        questions JSONL + images               annotations (testdev_balanced_questions)  testdev_balanced_predictions.json
    textvqa    questions JSONL (OCR tokens) + images  annotations (TextVQA_0.5.1_val.json)      -
    vizwiz     questions JSONL + images               annotations (optional, VizWiz val.json)   vizwiz_upload.json (EvalAI)
    pope       questions JSONL (category) + images    annotations: folder of coco_pope_<c>.json -
    mmbench    tsv (base64 images; rotations added    the TSV's answers                         mmbench_predictions.tsv (+ .xlsx
               when the file has none)                                                          with openpyxl; OpenCompass)
    seed       questions JSONL + images               annotations (SEED-Bench.json)             seed_upload.jsonl
    scienceqa  questions (llava_test_CQM-A.json)      problems (problems.json)                  -
               + images
    mme        questions (llava_mme.jsonl) + images   the release's question/answer .txt files  mme/<subtask>.txt (eval_tool's
                                                      (annotations; default: images)            calculation.py --results_dir)
    quilt_vqa  questions JSONL (quiltvqa_test_wo_ans  annotations (quiltvqa_test_w_ans.json:    -
               .jsonl) + images                       answer, answer_type, yes_no_answer)

Every kind also takes ``suffix`` (the response-format instruction appended to each question; default
the reference's; none for Quilt-VQA, whose ``model_vqa`` uses the file's text as is) and
``max_new_tokens`` (default the reference's: 128 for the ``model_vqa_loader`` benchmarks, 1024 for
MMBench, ScienceQA and Quilt-VQA). :class:`Item` holds the question *without* the suffix:
a known reference suffix at the end of the file's text is stripped, so the prompt is always
``question + suffix``.

Metrics are fractions in [0, 1] (MME: its own points, max 200 per subtask), named ``<metric>`` over the
set and ``<metric>/<group>`` per group (answer type, category, ...); ``chance`` is what a uniform random
guesser scores (Quilt-VQA's closed questions: the majority rate, see ``_score_quilt_vqa``; its open
metrics have none). Every question must be answered exactly once; upload files are written (atomically)
only after every check passed. A malformed file raises :class:`BenchmarkError` naming the file and
the question id, row or line.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sailflow.io import atomic_path, jsonl
from sailflow.llava import scorers
from sailflow.llava.scorers import LETTER_SUFFIX, SHORT_ANSWER_SUFFIX, VIZWIZ_SUFFIX

MMBENCH_CN_SUFFIX = "\n请直接回答选项字母。"
# Suffixes the reference question files end with (VizWiz's also on one line, as third-party copies write it).
KNOWN_SUFFIXES = tuple(sorted({
    SHORT_ANSWER_SUFFIX, LETTER_SUFFIX, VIZWIZ_SUFFIX, MMBENCH_CN_SUFFIX,
    "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
    " Answer the question using a single word or phrase.",
}, key=len, reverse=True))
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ROUND = 1_000_000  # MMBench stores the k-th circular copy of question i at index i + k * ROUND
MME_CHANCE = 75.0  # per subtask: a coin flip gets acc 1/2 and acc+ 1/4 (one yes and one no question per image)
SEED_OPTIONS = 4  # every SEED-Bench question has options A-D


class BenchmarkError(ValueError):
    """A benchmark entry or file is unusable; the message names the file and, where there is one,
    the question id, row or line."""


@dataclass
class Item:
    """One generation request: the model answers ``question + suffix`` about ``image``."""

    question_id: object  # as in the file (int or str), written back to the answers JSONL
    image: str | bytes | None  # an image file path, encoded image bytes (MMBench), None for text only
    question: str  # the prompt body without the response-format suffix
    category: str | None = None
    extra: dict = field(default_factory=dict)  # what scoring needs (options, answer, ...), JSON-serialisable


# ---- entries: keys, defaults, files ----------------------------------------------------------------

_COMMON = {
    "suffix": "the response-format instruction appended to each question (default: the reference's)",
    "max_new_tokens": "the generation limit (default: the reference's)",
}
_QUESTIONS = "LLaVA question file (JSONL: question_id, image, text, category)"
_IMAGES = "the folder the question file's image paths are relative to"

KINDS: dict[str, dict] = {
    "vqav2": {
        "keys": {"questions": f"{_QUESTIONS}, e.g. llava_vqav2_mscoco_test-dev2015.jsonl", "images": f"{_IMAGES} (test2015)",
                 "annotations": "optional: the official annotations (v2_mscoco_val2014_annotations.json) -> VQA accuracy",
                 "normalize": "evalai (LLaVA's EvalAI answer processor, default) or official (vqaEval.py)",
                 "upload_questions": "optional: the question file the upload covers (the reference's llava_vqav2_mscoco_test2015"
                                     ".jsonl); its questions outside `questions` get the answer \"\", as the reference writes",
                 **_COMMON},
        "required": ["questions", "images"],
        "paths": ["questions", "images", "annotations", "upload_questions"],
        "defaults": {"suffix": SHORT_ANSWER_SUFFIX, "max_new_tokens": 128, "normalize": "evalai"},
        "headline": "accuracy",
    },
    "gqa": {
        "keys": {"questions": f"{_QUESTIONS}, e.g. llava_gqa_testdev_balanced.jsonl", "images": f"{_IMAGES} (gqa/data/images)",
                 "annotations": "the official questions with answers (testdev_balanced_questions.json)", **_COMMON},
        "required": ["questions", "images", "annotations"],
        "paths": ["questions", "images", "annotations"],
        "defaults": {"suffix": SHORT_ANSWER_SUFFIX, "max_new_tokens": 128},
        "headline": "accuracy",
    },
    "textvqa": {
        "keys": {"questions": f"{_QUESTIONS}, e.g. llava_textvqa_val_v051_ocr.jsonl (question_id = TextVQA image_id)",
                 "images": f"{_IMAGES} (train_images)", "annotations": "TextVQA_0.5.1_val.json", **_COMMON},
        "required": ["questions", "images", "annotations"],
        "paths": ["questions", "images", "annotations"],
        "defaults": {"suffix": SHORT_ANSWER_SUFFIX, "max_new_tokens": 128},
        "headline": "accuracy",
    },
    "vizwiz": {
        "keys": {"questions": f"{_QUESTIONS}, e.g. llava_test.jsonl", "images": f"{_IMAGES} (vizwiz/test)",
                 "annotations": "optional: VizWiz annotations (val.json: image, answers x10) -> VQA accuracy",
                 "normalize": "evalai (default) or official (vqaEval.py)", **_COMMON},
        "required": ["questions", "images"],
        "paths": ["questions", "images", "annotations"],
        "defaults": {"suffix": VIZWIZ_SUFFIX, "max_new_tokens": 128, "normalize": "evalai"},
        "headline": "accuracy",
    },
    "pope": {
        "keys": {"questions": f"{_QUESTIONS}, e.g. llava_pope_test.jsonl (category: adversarial, popular, random)",
                 "images": f"{_IMAGES} (COCO val2014)",
                 "annotations": "the folder of coco_pope_<category>.json (JSONL lines with image, text, label)", **_COMMON},
        "required": ["questions", "images", "annotations"],
        "paths": ["questions", "images", "annotations"],
        "defaults": {"suffix": SHORT_ANSWER_SUFFIX, "max_new_tokens": 128},
        "headline": "f1",
    },
    "mmbench": {
        "keys": {"tsv": "MMBench TSV (index, question, hint, A, B, ..., answer, category, image as base64), "
                        "e.g. mmbench_dev_20230712.tsv",
                 "circular": "true (default): CircularEval, adding the rotated copies when the TSV has none; "
                             "false: the questions once (rows with index < 1e6)", **_COMMON},
        "required": ["tsv"],
        "paths": ["tsv"],
        "defaults": {"suffix": LETTER_SUFFIX, "max_new_tokens": 1024, "circular": True},
        "headline": "circular_accuracy",
    },
    "seed": {
        "keys": {"questions": f"{_QUESTIONS}, e.g. llava-seed-bench.jsonl (the multiple-choice prompt)",
                 "images": f"{_IMAGES} (SEED-Bench-image, SEED-Bench-video-image)",
                 "annotations": "SEED-Bench.json (questions: question_id, answer, data_type, question_type_id)", **_COMMON},
        "required": ["questions", "images", "annotations"],
        "paths": ["questions", "images", "annotations"],
        "defaults": {"suffix": LETTER_SUFFIX, "max_new_tokens": 128},
        "headline": "accuracy/image",
    },
    "scienceqa": {
        "keys": {"questions": "LLaVA's llava_test_CQM-A.json (a JSON array: id, image?, conversations)",
                 "images": f"{_IMAGES} (scienceqa/images/test)", "problems": "ScienceQA problems.json (choices, answer)",
                 **_COMMON},
        "required": ["questions", "images", "problems"],
        "paths": ["questions", "images", "problems"],
        "defaults": {"suffix": LETTER_SUFFIX, "max_new_tokens": 1024},
        "headline": "accuracy/img",
    },
    "mme": {
        "keys": {"questions": f"{_QUESTIONS}: llava_mme.jsonl (question_id <subtask>/<image>)",
                 "images": "MME_Benchmark_release_version (images as the question file names them)",
                 "annotations": "optional: the folder with MME's question/answer .txt files "
                                "(<subtask>/questions_answers_YN/*.txt or <subtask>/*.txt; default: `images`)",
                 **_COMMON},
        "required": ["questions", "images"],
        "paths": ["questions", "images", "annotations"],
        "defaults": {"suffix": SHORT_ANSWER_SUFFIX, "max_new_tokens": 128},
        "headline": "perception",
    },
    "quilt_vqa": {
        "keys": {"questions": f"{_QUESTIONS}, e.g. quiltvqa_test_wo_ans.jsonl (Quilt-VQA-RED: quiltvqa_red_test_wo_ans.jsonl)",
                 "images": f"{_IMAGES} (Quilt-VQA's images)",
                 "annotations": "the gold answers, e.g. quiltvqa_test_w_ans.json (a JSON array: id = question_id, answer, "
                                "answer_type OPEN | other | CLOSED, and for CLOSED yes_no_answer (else answer) yes/no)",
                 **_COMMON},
        "required": ["questions", "images", "annotations"],
        "paths": ["questions", "images", "annotations"],
        "defaults": {"suffix": "", "max_new_tokens": 1024},
        "headline": "recall/open",
    },
}
_CHOICES = {"normalize": ("evalai", "official")}


def _with_defaults(spec: dict) -> dict:
    return {**KINDS[spec["kind"]]["defaults"], **spec}


def check_spec(spec: dict, name: str) -> None:
    """Refuse an entry with an unknown kind, an unknown key (a typo would be ignored), a missing key
    or a value of the wrong type; the message names ``llava_eval_tasks.<name>.<key>``."""
    where = f"llava_eval_tasks.{name}"
    if not isinstance(spec, dict):
        raise BenchmarkError(f"{where}: expected a mapping, not {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise BenchmarkError(f"{where}.kind must be one of {list(KINDS)}, not {kind!r}")
    info = KINDS[kind]
    unknown = sorted(set(spec) - set(info["keys"]) - {"kind"})
    if unknown:
        raise BenchmarkError(f"{where}.{unknown[0]}: unknown key for a {kind} task (its keys: {sorted(info['keys'])})")
    for key in info["required"]:
        if key not in spec:
            raise BenchmarkError(f"{where}.{key}: missing (a {kind} task needs {info['required']})")
    for key, value in spec.items():
        if key in info["paths"] and not (isinstance(value, str) and value):
            raise BenchmarkError(f"{where}.{key}: expected a path, not {value!r}")
        if key == "suffix" and not isinstance(value, str):
            raise BenchmarkError(f"{where}.suffix: expected a string, not {value!r}")
        if key == "max_new_tokens" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BenchmarkError(f"{where}.max_new_tokens: expected a positive integer, not {value!r}")
        if key == "circular" and not isinstance(value, bool):
            raise BenchmarkError(f"{where}.circular: expected true or false, not {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise BenchmarkError(f"{where}.{key}: must be one of {list(_CHOICES[key])}, not {value!r}")


def spec_files(spec: dict) -> list[str]:
    """The files and folders the task reads (its jobs' inputs)."""
    return [spec[k] for k in KINDS[spec["kind"]]["paths"] if k in spec]


GENERATION_KEYS = ("kind", "questions", "images", "tsv", "circular", "suffix", "max_new_tokens")


def generation_spec(spec: dict) -> dict:
    """What answering the task's questions reads (defaults filled in): its answers depend on nothing else,
    so a scoring option (``annotations``, ``normalize``, ``upload_questions``, ``problems``) never reruns
    the generation. :func:`load_items` takes it with ``check=False`` (the whole entry was checked when the
    workflow was planned)."""
    spec = _with_defaults(spec)
    return {k: spec[k] for k in GENERATION_KEYS if k in spec}


def generation_files(spec: dict) -> list[str]:
    """The files and folders answering the task's questions reads (its generation job's inputs)."""
    return [spec[k] for k in ("questions", "images", "tsv") if k in spec]


def prompt_settings(spec: dict) -> dict:
    """``{"suffix", "max_new_tokens"}`` with the kind's defaults (the reference's) filled in."""
    spec = _with_defaults(spec)
    return {"suffix": spec["suffix"], "max_new_tokens": spec["max_new_tokens"]}


def strip_suffix(text: str, suffix: str | None = None) -> str:
    """``text`` without the response-format suffix at its end: ``suffix`` or a known reference one."""
    for s in ([suffix] if suffix else []) + list(KNOWN_SUFFIXES):
        if text.endswith(s):
            return text[: -len(s)]
    return text


# ---- reading files ---------------------------------------------------------------------------------


def _require(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"{path}: not found")
    return path


def _read_json(path):
    path = _require(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}, line {e.lineno}: not JSON ({e.msg})") from None


def _json_array_by_id(path, what: str):
    """``(entry, id, where)`` for every object of the JSON array in ``path`` (``where`` names the file, the
    entry's index and its ``id`` for error messages); anything else is an error naming file and entry."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a JSON array of {what}")
    for k, entry in enumerate(data):
        where = f"{path}, entry {k}"
        if not isinstance(entry, dict):
            raise BenchmarkError(f"{where}: expected an object")
        qid = _get(entry, "id", where, (int, str))
        yield entry, qid, where + f" (id {qid!r})"


def _read_jsonl(path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line."""
    path = _require(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}, line {n}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise BenchmarkError(f"{path}, line {n}: expected a JSON object")
            rows.append((n, obj))
    return rows


def read_answers(path: str | Path) -> list[dict]:
    """An answers JSONL (LLaVA's: question_id, prompt, text, ...); a line that is not JSON is an
    error naming the file and line."""
    return [obj for _, obj in _read_jsonl(path)]


def _get(row: dict, key: str, where: str, types: tuple = (str,)):
    if key not in row:
        raise BenchmarkError(f"{where}: no {key!r}")
    if not isinstance(row[key], types):
        raise BenchmarkError(f"{where}: {key!r} must be {' or '.join(t.__name__ for t in types)}, not {row[key]!r}")
    return row[key]


def _image_file(images: str, image: str, where: str) -> str:
    path = Path(images) / image
    if not path.is_file():
        raise BenchmarkError(f"{where}: image {path} not found")
    return str(path)


def _jsonl_items(spec: dict) -> list[Item]:
    """A LLaVA question file (``model_vqa_loader``'s format); every question has an existing image."""
    path = spec["questions"]
    items = []
    for n, row in _read_jsonl(path):
        where = f"{path}, line {n}"
        qid = _get(row, "question_id", where, (int, str))
        where += f" (question {qid!r})"
        image = _get(row, "image", where)
        question = strip_suffix(_get(row, "text", where), spec.get("suffix"))
        items.append(Item(qid, _image_file(spec["images"], image, where), question, row.get("category"), {"image_file": image}))
    return items


# ---- loading ---------------------------------------------------------------------------------------


def _textvqa_question(prompt: str) -> str:
    """The question line of a TextVQA prompt, as the reference's ``prompt_processor`` takes it: line 0,
    or line 1 when the prompt starts with the OCR tokens."""
    lines = prompt.split("\n")
    return lines[1] if lines[0].startswith("Reference OCR token:") and len(lines) > 1 else lines[0]


def _load_textvqa(spec: dict) -> list[Item]:
    items = _jsonl_items(spec)
    for it in items:
        it.extra["question"] = _textvqa_question(it.question)
    return items


def _load_pope(spec: dict) -> list[Item]:
    items = _jsonl_items(spec)
    for it in items:
        if not isinstance(it.category, str):
            raise BenchmarkError(f"{spec['questions']}: question {it.question_id!r} has no category (adversarial, popular, ...)")
    return items


def _load_mme(spec: dict) -> list[Item]:
    items = _jsonl_items(spec)
    for it in items:
        if it.category is None:  # the reference's converter takes the subtask from "<subtask>/<image>"
            it.category = str(it.question_id).split("/")[0]
    return items


def _load_scienceqa(spec: dict) -> list[Item]:
    """LLaVA's ScienceQA test file: a JSON array in the training format; the human turn's ``<image>`` is
    dropped (the reference's ``model_vqa_science``)."""
    path = spec["questions"]
    items = []
    for entry, qid, where in _json_array_by_id(path, "questions"):
        turns = _get(entry, "conversations", where, (list,))
        if not turns or not isinstance(turns[0], dict) or not isinstance(turns[0].get("value"), str):
            raise BenchmarkError(f"{where}: the first conversation turn has no text 'value'")
        image = entry.get("image")
        path_ = _image_file(spec["images"], image, where) if image else None
        question = strip_suffix(turns[0]["value"].replace("<image>", "").strip(), spec.get("suffix"))
        items.append(Item(qid, path_, question, None, {"image_file": image} if image else {}))
    return items


def _is_none(value) -> bool:
    """The reference's ``is_none`` for MMBench cells (plus empty): None, NaN, 'nan', 'none', ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def _load_mmbench(spec: dict) -> list[Item]:
    """MMBench TSV rows; the prompt is the reference's (``model_vqa_mmbench``): ``[hint\\n]question``
    then ``\\nA. ...`` per option, stopping at the first empty one. With ``circular`` and no circular
    copies in the file (index >= 1e6), copies with the options rotated are added (index + k * 1e6,
    the answer letter remapped), as MMBench's full files store them."""
    import base64
    import binascii

    import pandas as pd

    path = _require(spec["tsv"])
    try:
        df = pd.read_csv(path, sep="\t", dtype=str)  # the reference's read_table: empty / "nan" / "None" cells are NaN
    except (ValueError, pd.errors.ParserError) as e:
        raise BenchmarkError(f"{path}: not a readable TSV ({e})") from None
    missing = [c for c in ("index", "question", "answer", "image", "A", "B") if c not in df.columns]
    if missing:
        raise BenchmarkError(f"{path}: no column(s) {missing} (it has {list(df.columns)})")
    letters = []
    for c in LETTERS:
        if c not in df.columns:
            break
        letters.append(c)

    rows = df.to_dict("records")
    indices = []
    for k, r in enumerate(rows):
        try:
            indices.append(int(str(r["index"]).strip()))
        except ValueError:
            raise BenchmarkError(f"{path}, row {k + 1}: index {r['index']!r} is not an integer") from None
    raw_images = dict(zip(indices, (r["image"] for r in rows)))
    decoded: dict[str, bytes] = {}

    def image_bytes(value, where: str) -> bytes:
        if _is_none(value):
            raise BenchmarkError(f"{where}: no image")
        if len(value) <= 64 and value.strip().isdigit() and int(value) in raw_images:  # VLMEvalKit: the image of that row
            value = raw_images[int(value)]
        if value not in decoded:
            try:
                decoded[value] = base64.b64decode(value, validate=False)
            except (binascii.Error, ValueError) as e:
                raise BenchmarkError(f"{where}: the image is not base64 ({e})") from None
        if not decoded[value]:
            raise BenchmarkError(f"{where}: empty image")
        return decoded[value]

    has_copies = any(i >= ROUND for i in indices)
    main_indices = {i for i in indices if i < ROUND}
    items, seen = [], set()
    for k, (idx, r) in enumerate(zip(indices, rows)):
        where = f"{path}, row {k + 1} (index {idx})"
        if idx in seen:
            raise BenchmarkError(f"{where}: index {idx} appears twice")
        seen.add(idx)
        main = scorers.mmbench_main_index(idx)
        if idx >= ROUND and not spec["circular"]:
            continue
        if idx >= ROUND and main not in main_indices:
            raise BenchmarkError(f"{where}: a circular copy of question {main}, which is not in the file")
        options = []
        for c in letters:
            if _is_none(r[c]):
                break
            options.append(str(r[c]))
        answer = str(r["answer"]).strip() if not _is_none(r["answer"]) else None
        if len(options) < 2 or answer not in letters[: len(options)]:
            raise BenchmarkError(f"{where}: answer {r['answer']!r} is not one of its options {letters[: len(options)]}")
        question = "" if _is_none(r["question"]) else str(r["question"])
        hint = None if _is_none(r.get("hint")) else str(r["hint"])
        category = None if _is_none(r.get("category")) else str(r["category"])
        image = image_bytes(r["image"], where)
        rounds = range(len(options)) if spec["circular"] and not has_copies and idx < ROUND else range(1)
        for j in rounds:
            rotated = options[j:] + options[:j]
            letter = letters[(letters.index(answer) - j) % len(options)]
            prompt = (f"{hint}\n" if hint is not None else "") + question
            prompt += "".join(f"\n{c}. {o}" for c, o in zip(letters, rotated))
            items.append(Item(idx + j * ROUND, image, prompt, category,
                              {"options": dict(zip(letters, rotated)), "answer": letter, "main_index": main,
                               "question": question, "hint": hint}))
    return items


def load_items(spec: dict, name: str, check: bool = True) -> list[Item]:
    """The task's questions, in file order (MMBench: each question followed by its added rotations),
    checked: every image exists, every question id is unique. ``check``: the entry itself first
    (:func:`check_spec`; off for a :func:`generation_spec`, which lacks the scoring keys)."""
    if check:
        check_spec(spec, name)
    spec = _with_defaults(spec)
    kind = spec["kind"]
    items = _LOADERS[kind](spec)
    if not items:
        raise BenchmarkError(f"{spec_files(spec)[0]}: no questions")
    seen = set()
    for it in items:
        key = _item_key(kind, it)
        if key in seen:
            what = f"question {it.question_id!r}" + (f" asking {it.extra['question']!r}" if kind == "textvqa" else "")
            raise BenchmarkError(f"{spec_files(spec)[0]}: {what} appears twice")
        seen.add(key)
    return items


# ---- matching answers to questions -----------------------------------------------------------------


def _item_key(kind: str, item: Item) -> str:
    """The join key of a question; TextVQA's question ids are image ids, shared by an image's
    questions, so its key adds the question line (the reference's join)."""
    if kind == "textvqa":
        return f"{item.question_id}\n{item.extra['question'].lower()}"
    return str(item.question_id)


def _answer_key(kind: str, answer: dict, where: str) -> str:
    if kind == "textvqa":
        return f"{answer['question_id']}\n{_textvqa_question(_get(answer, 'prompt', where)).lower()}"
    return str(answer["question_id"])


def _answer_texts(kind: str, items: list[Item], answers: list[dict], source: str) -> list[str]:
    """The answer text of each item, in item order; each question must be answered exactly once."""
    index = {_item_key(kind, it): i for i, it in enumerate(items)}
    texts: list[str | None] = [None] * len(items)
    unknown, twice = [], []
    for n, a in enumerate(answers, 1):
        where = f"{source}, answer {n}"
        if not isinstance(a, dict) or "question_id" not in a:
            raise BenchmarkError(f"{where}: no 'question_id'")
        _get(a, "text", where)
        i = index.get(_answer_key(kind, a, where))
        if i is None:
            unknown.append(a["question_id"])
        elif texts[i] is not None:
            twice.append(a["question_id"])
        else:
            texts[i] = a["text"]
    missing = [items[i].question_id for i, t in enumerate(texts) if t is None]
    problems = [f"{len(ids)} {what} (first: {ids[:5]})" for ids, what in (
        (missing, "question(s) not answered"), (twice, "answer(s) to a question answered before"),
        (unknown, "answer(s) to questions not in the question file")) if ids]
    if problems:
        raise BenchmarkError(f"{source}: " + "; ".join(problems))
    return texts


# ---- scoring ---------------------------------------------------------------------------------------


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values))


def _grouped(values: list, groups: list, metric: str, aggregate: Callable[[list], float]) -> dict:
    """``{metric/<group>: aggregate(values of the group)}`` for groups that are not None."""
    by = defaultdict(list)
    for v, g in zip(values, groups):
        if g is not None:
            by[str(g)].append(v)
    return {f"{metric}/{g}": aggregate(v) for g, v in sorted(by.items())}


def _text_writer(text: str) -> Callable[[Path], None]:
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def _json_writer(obj) -> Callable[[Path], None]:
    return _text_writer(json.dumps(obj, ensure_ascii=False) + "\n")


def _jsonl_writer(lines: list) -> Callable[[Path], None]:
    return _text_writer(jsonl(lines))


def _vqa_scores(items: list[Item], texts: list[str], gt_lists: list, groups: list, normalize: str, annotations: str) -> dict:
    """VQA accuracy overall and per group; chance: a guesser uniform over the set's answers."""
    for it, gts in zip(items, gt_lists):
        if len(gts) != 10:
            raise BenchmarkError(f"{annotations}: question {it.question_id!r} has {len(gts)} answers; VQA accuracy needs 10")
    acc = [scorers.vqa_accuracy(t, gts, normalize=normalize) for t, gts in zip(texts, gt_lists)]
    metrics = {"accuracy": _mean(acc), **_grouped(acc, groups, "accuracy", _mean)}
    chance = {"accuracy": scorers.vqa_chance(gt_lists),
              **_grouped(gt_lists, groups, "accuracy", scorers.vqa_chance)}
    judged = [(Counter(gts).most_common(1)[0][0], a) for gts, a in zip(gt_lists, acc)]
    return {"metrics": metrics, "chance": chance, "judged": judged}


def _answers_of(ann: dict, where: str) -> list[str]:
    answers = _get(ann, "answers", where, (list,))
    try:
        return [a["answer"] if isinstance(a, dict) else a for a in answers]
    except KeyError:
        raise BenchmarkError(f"{where}: an answer without 'answer'") from None


def _score_vqav2(spec: dict, items: list[Item], texts: list[str]) -> dict:
    out = {"metrics": {}, "chance": {}, "counts": {"questions": len(items)}}
    if "annotations" in spec:
        path = spec["annotations"]
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise BenchmarkError(f"{path}: expected the official VQAv2 annotations ({{'annotations': [...]}})")
        by_id = {str(a.get("question_id")): a for a in data["annotations"] if isinstance(a, dict)}
        gt_lists, types = [], []
        for it in items:
            ann = by_id.get(str(it.question_id))
            if ann is None:
                raise BenchmarkError(f"{path}: no annotation for question {it.question_id!r} of {spec['questions']}")
            gt_lists.append(_answers_of(ann, f"{path} (question {it.question_id!r})"))
            types.append(ann.get("answer_type"))
        out.update(_vqa_scores(items, texts, gt_lists, types, spec["normalize"], path))
    answered = {str(it.question_id): scorers.evalai_normalize(t) for it, t in zip(items, texts)}
    upload = [{"question_id": it.question_id, "answer": answered[str(it.question_id)]} for it in items]
    if "upload_questions" in spec:
        rows = _read_jsonl(spec["upload_questions"])
        covered = {str(_get(r, "question_id", f"{spec['upload_questions']}, line {n}", (int, str))) for n, r in rows}
        outside = [it.question_id for it in items if str(it.question_id) not in covered]
        if outside:
            raise BenchmarkError(f"{spec['upload_questions']}: lacks {len(outside)} question(s) of {spec['questions']} "
                                 f"(first: {outside[:5]})")
        upload = [{"question_id": r["question_id"], "answer": answered.get(str(r["question_id"]), "")} for _, r in rows]
        out["counts"]["upload_questions"] = len(upload)
    out["writes"] = [("vqav2_upload.json", _json_writer(upload))]
    return out


def _score_vizwiz(spec: dict, items: list[Item], texts: list[str]) -> dict:
    out = {"metrics": {}, "chance": {}, "counts": {"questions": len(items)}}
    if "annotations" in spec:
        path = spec["annotations"]
        data = _read_json(path)
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: expected VizWiz annotations (a JSON array of {{image, question, answers}})")
        by_image = {Path(str(a.get("image"))).name: a for a in data if isinstance(a, dict)}
        gt_lists, types = [], []
        for it in items:
            ann = by_image.get(Path(it.extra["image_file"]).name)
            if ann is None:
                raise BenchmarkError(f"{path}: no annotation for image {it.extra['image_file']!r} (question {it.question_id!r})")
            gt_lists.append(_answers_of(ann, f"{path} (question {it.question_id!r})"))
            types.append(ann.get("answer_type"))
        out.update(_vqa_scores(items, texts, gt_lists, types, spec["normalize"], path))
    upload = [{"image": it.extra["image_file"], "answer": scorers.evalai_normalize(t)} for it, t in zip(items, texts)]
    out["writes"] = [("vizwiz_upload.json", _json_writer(upload))]
    return out


def _score_textvqa(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """Joined on (image_id, question lower-cased) as the reference's ``eval_textvqa``; VQA accuracy
    with the EvalAI processor (m4c ``TextVQAAccuracyEvaluator``)."""
    path = spec["annotations"]
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise BenchmarkError(f"{path}: expected TextVQA annotations ({{'data': [...]}})")
    by_key = {(str(a.get("image_id")), str(a.get("question", "")).lower()): a for a in data["data"] if isinstance(a, dict)}
    gt_lists = []
    for it in items:
        ann = by_key.get((str(it.question_id), it.extra["question"].lower()))
        if ann is None:
            raise BenchmarkError(f"{path}: no annotation for image {it.question_id!r} asking {it.extra['question']!r}")
        gt_lists.append(_answers_of(ann, f"{path} (image {it.question_id!r}, question {it.extra['question']!r})"))
    out = _vqa_scores(items, texts, gt_lists, [None] * len(items), "evalai", path)
    return {**out, "counts": {"questions": len(items)}, "writes": []}


def _score_gqa(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """Exact match of ``text.rstrip('.').lower()`` with the gold answer (per structural type too);
    chance: a guesser uniform over the set's gold answers."""
    path = spec["annotations"]
    data = _read_json(path)
    if not isinstance(data, dict):
        raise BenchmarkError(f"{path}: expected the GQA questions ({{question id: {{answer, ...}}}})")
    golds, types = [], []
    for it in items:
        q = data.get(str(it.question_id))
        if not isinstance(q, dict) or not isinstance(q.get("answer"), str):
            raise BenchmarkError(f"{path}: no answer for question {it.question_id!r}")
        golds.append(q["answer"])
        types.append((q.get("types") or {}).get("structural"))
    correct = [scorers.gqa_match(t, g) for t, g in zip(texts, golds)]

    def uniform(gold: list[str]) -> float:
        return 1 / len(set(gold))

    predictions = [{"questionId": it.question_id, "prediction": scorers.gqa_normalize(t)} for it, t in zip(items, texts)]
    return {"metrics": {"accuracy": _mean(correct), **_grouped(correct, types, "accuracy", _mean)},
            "chance": {"accuracy": uniform(golds), **_grouped(golds, types, "accuracy", uniform)},
            "counts": {"questions": len(items)}, "judged": [(g, float(c)) for g, c in zip(golds, correct)],
            "writes": [("testdev_balanced_predictions.json", _json_writer(predictions))]}


def _pope_key(image: str, text: str) -> tuple[str, str]:
    return Path(image).name, strip_suffix(text).strip().lower()


def _score_pope(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """Per category (coco_pope_<category>.json) the reference's metrics; ``f1`` and ``acc`` are the
    means over categories (LLaVA-1.5 reports the mean F1). The reference zips the answers with the
    annotation lines in order; here each question is joined with its annotation line on (image,
    question), since LLaVA's question ids run over all categories and the annotation files' restart."""
    folder = Path(spec["annotations"])
    labels: list[str] = []
    files: dict[str, dict] = {}
    for it in items:
        cat = it.category
        if cat not in files:
            path = _require(folder / f"coco_pope_{cat}.json")
            table = {}
            for n, row in _read_jsonl(path):
                where = f"{path}, line {n}"
                key = _pope_key(_get(row, "image", where), _get(row, "text", where))
                if key in table:
                    raise BenchmarkError(f"{where}: image {key[0]} asks {key[1]!r} twice")
                table[key] = (_get(row, "label", where), where)
            files[cat] = {"path": path, "table": table}
        hit = files[cat]["table"].get(_pope_key(it.extra["image_file"], it.question))
        if hit is None:
            raise BenchmarkError(f"{files[cat]['path']}: no line for question {it.question_id!r} "
                                 f"({it.extra['image_file']}: {it.question!r})")
        if hit[0].strip().lower() not in ("yes", "no"):
            raise BenchmarkError(f"{hit[1]}: label {hit[0]!r} is neither yes nor no")
        labels.append(hit[0])
    metrics, chance, counts = {}, {}, {"questions": len(items)}
    for cat in sorted(files):
        idx = [i for i, it in enumerate(items) if it.category == cat]
        m = scorers.pope_metrics([texts[i] for i in idx], [labels[i] for i in idx])
        positive = sum(labels[i].strip().lower() == "yes" for i in idx) / len(idx)
        guess = {"acc": 0.5, "precision": positive, "recall": 0.5, "f1": positive / (positive + 0.5), "yes_ratio": 0.5}
        for k in ("acc", "precision", "recall", "f1", "yes_ratio"):
            metrics[f"{k}/{cat}"], chance[f"{k}/{cat}"] = float(m[k]), guess[k]
        counts.update({f"{k}/{cat}": m[k] for k in ("tp", "fp", "tn", "fn")})
    for k in ("f1", "acc"):
        metrics[k] = _mean(metrics[f"{k}/{c}"] for c in files)
        chance[k] = _mean(chance[f"{k}/{c}"] for c in files)
    judged = [(lab, float(scorers.pope_parse(t) == lab.strip().lower())) for lab, t in zip(labels, texts)]
    return {"metrics": metrics, "chance": chance, "counts": counts, "writes": [], "judged": judged}


def _quilt_gold(path) -> dict[str, tuple[dict, str]]:
    """Quilt-VQA's gold answers (``quiltvqa_test_w_ans.json``: a JSON array of ``{id, answer, answer_type,
    ...}``) by str(id), each with where it is, for error messages."""
    table = {}
    for entry, qid, where in _json_array_by_id(path, "Quilt-VQA gold answers {id, answer, answer_type, ...}"):
        if str(qid) in table:
            raise BenchmarkError(f"{where}: id {qid!r} appears twice (first at {table[str(qid)][1]})")
        table[str(qid)] = (entry, where)
    return table


def _score_quilt_vqa(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """Quilt-LLaVA's ``quilt_eval.py``, each question joined with its gold answer by id (the reference
    asserts that the gold and the model's answers list the same ids in the same order and zips them).

    OPEN questions (answer_type OPEN or other): the means over them of ``quilt_open_scores`` against
    ``answer``: ``exact_match/open``, ``precision/open``, ``recall/open`` (the paper's open-set
    recall), ``f1/open``. No chance level: an open answer has no finite set to guess from.
    CLOSED questions: ``accuracy/closed``, ``quilt_closed_parse`` against ``yes_no_answer`` (Quilt-VQA;
    the reference's ``--quilt``), else the normalised ``answer`` (the reference without it), which must be
    yes or no.

    Chance for ``accuracy/closed`` is the majority rate (the accuracy of always giving the commoner gold
    answer), not a coin flip's 0.5: the closed questions are not balanced, and the parser turns every
    answer without "no"/"not" (a refusal, an empty text) into 'yes', so a model that never commits
    already scores the yes rate. Unlike the reference, predictions are not cut to the length of an
    ``--anchor`` file's answers (its default names a file, so the cut happens unless disabled).
    Gold entries for ids outside the question file are ignored, as the other kinds ignore annotations."""
    path = spec["annotations"]
    table = _quilt_gold(path)
    open_scores, closed, judged = [], [], []
    for it, t in zip(items, texts):
        hit = table.get(str(it.question_id))
        if hit is None:
            raise BenchmarkError(f"{path}: no gold answer for question {it.question_id!r} of {spec['questions']}")
        entry, where = hit
        answer_type = _get(entry, "answer_type", where)
        if answer_type in ("OPEN", "other"):
            gold = _get(entry, "answer", where)
            s = scorers.quilt_open_scores(t, gold)
            open_scores.append(s)
            judged.append((gold, s["recall"]))
        elif answer_type == "CLOSED":
            if "yes_no_answer" in entry:
                gold = _get(entry, "yes_no_answer", where).strip().lower()
            else:
                gold = scorers.quilt_normalize(_get(entry, "answer", where))
            if gold not in ("yes", "no"):
                raise BenchmarkError(f"{where}: a CLOSED question's answer must be yes or no, not "
                                     f"{entry.get('yes_no_answer', entry.get('answer'))!r}")
            right = scorers.quilt_closed_parse(t) == gold
            closed.append((gold, right))
            judged.append((gold, float(right)))
        else:
            raise BenchmarkError(f"{where}: answer_type {answer_type!r} is not OPEN, other or CLOSED")
    metrics, chance = {}, {}
    if open_scores:
        for k in ("exact_match", "precision", "recall", "f1"):
            metrics[f"{k}/open"] = _mean(s[k] for s in open_scores)
    if closed:
        yes_rate = _mean(g == "yes" for g, _ in closed)
        metrics["accuracy/closed"] = _mean(right for _, right in closed)
        chance["accuracy/closed"] = max(yes_rate, 1 - yes_rate)
    counts = {"questions": len(items), "open": len(open_scores), "closed": len(closed),
              "closed_yes": sum(g == "yes" for g, _ in closed)}
    return {"metrics": metrics, "chance": chance, "counts": counts, "writes": [], "judged": judged}


def _score_mmbench(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """The choice of each answer by MMBench's rules (``mc_extract``, no GPT fallback); ``accuracy``:
    the questions' single pass (rows with index < 1e6), ``circular_accuracy``: a question counts only
    if every rotation is right (CircularEval); both per category too."""
    correct = [scorers.mc_extract(t, it.extra["options"]) == it.extra["answer"] for it, t in zip(items, texts)]
    main = [i for i, it in enumerate(items) if int(it.question_id) < ROUND]
    cats = [items[i].category for i in main]
    ok = [correct[i] for i in main]
    n_options = [1 / len(items[i].extra["options"]) for i in main]
    metrics = {"accuracy": _mean(ok), **_grouped(ok, cats, "accuracy", _mean)}
    chance = {"accuracy": _mean(n_options), **_grouped(n_options, cats, "accuracy", _mean)}
    counts = {"questions": len(main), "rows": len(items)}
    if spec["circular"]:
        rounds, guess = defaultdict(list), defaultdict(lambda: 1.0)
        for it, c in zip(items, correct):
            rounds[it.extra["main_index"]].append(c)
            guess[it.extra["main_index"]] *= 1 / len(it.extra["options"])
        keys = [items[i].extra["main_index"] for i in main]
        metrics["circular_accuracy"] = scorers.circular_accuracy(rounds)
        metrics.update(_grouped(keys, cats, "circular_accuracy",
                                lambda ks: scorers.circular_accuracy({k: rounds[k] for k in ks})))
        chance["circular_accuracy"] = _mean(guess.values())
        chance.update(_grouped(keys, cats, "circular_accuracy", lambda ks: _mean(guess[k] for k in ks)))
    judged = [(f"{it.extra['answer']}. {it.extra['options'][it.extra['answer']]}", float(c)) for it, c in zip(items, correct)]
    return {"metrics": metrics, "chance": chance, "counts": counts, "writes": _mmbench_predictions(items, texts), "judged": judged}


def _mmbench_predictions(items: list[Item], texts: list[str]) -> list:
    """The reference's upload table for the OpenCompass server: index, question, options, prediction,
    answer (the reference drops hint, category, source, image, comment, l2-category); a TSV, and an
    .xlsx as the reference writes when openpyxl is installed."""
    import importlib.util

    import pandas as pd

    letters = sorted({c for it in items for c in it.extra["options"]})
    df = pd.DataFrame([{"index": it.question_id, "question": it.extra["question"],
                        **{c: it.extra["options"].get(c) for c in letters}, "prediction": t, "answer": it.extra["answer"]}
                       for it, t in zip(items, texts)])
    writes = [("mmbench_predictions.tsv", lambda tmp: df.to_csv(tmp, sep="\t", index=False))]
    if importlib.util.find_spec("openpyxl") is not None:
        writes.append(("mmbench_predictions.xlsx", lambda tmp: df.to_excel(tmp, index=False, engine="openpyxl")))
    return writes


def _score_seed(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """The reference's exact match of the answer text with the letter; overall, image, video and per
    question type; chance 1/4."""
    path = spec["annotations"]
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise BenchmarkError(f"{path}: expected SEED-Bench.json ({{'questions': [...]}})")
    by_id = {str(q.get("question_id")): q for q in data["questions"] if isinstance(q, dict)}
    type_names = {str(v): k for k, v in (data.get("question_type") or {}).items()}
    correct, data_types, q_types, upload, golds = [], [], [], [], []
    for it, t in zip(items, texts):
        q = by_id.get(str(it.question_id))
        if q is None or not isinstance(q.get("answer"), str):
            raise BenchmarkError(f"{path}: no answer for question {it.question_id!r}")
        correct.append(scorers.seed_match(t, q["answer"]))
        golds.append(q["answer"])
        data_types.append(q.get("data_type"))
        q_types.append(type_names.get(str(q.get("question_type_id")), q.get("question_type_id")))
        upload.append({"question_id": q["question_id"], "prediction": t})
    metrics = {"accuracy": _mean(correct), **_grouped(correct, data_types, "accuracy", _mean),
               **_grouped(correct, q_types, "accuracy", _mean)}
    return {"metrics": metrics, "chance": {k: 1 / SEED_OPTIONS for k in metrics}, "counts": {"questions": len(items)},
            "judged": [(g, float(c)) for g, c in zip(golds, correct)], "writes": [("seed_upload.jsonl", _jsonl_writer(upload))]}


def _score_scienceqa(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """The reference's parse (``sqa_parse``) against the problem's answer letter; ``accuracy`` and
    ``accuracy/img`` (questions with an image: SQA-IMG, the figure LLaVA-1.5 reports)."""
    path = spec["problems"]
    problems = _read_json(path)
    if not isinstance(problems, dict):
        raise BenchmarkError(f"{path}: expected ScienceQA problems ({{id: {{choices, answer, ...}}}})")
    correct, uniform, golds = [], [], []
    for it, t in zip(items, texts):
        p = problems.get(str(it.question_id))
        where = f"{path} (problem {it.question_id!r})"
        if not isinstance(p, dict):
            raise BenchmarkError(f"{path}: no problem {it.question_id!r}")
        choices, answer = _get(p, "choices", where, (list,)), _get(p, "answer", where, (int,))
        letters = list(LETTERS[: len(choices)])
        if not 0 <= answer < len(letters):
            raise BenchmarkError(f"{where}: answer {answer} is not one of its {len(letters)} choices")
        correct.append(scorers.sqa_parse(t, letters) == letters[answer])
        golds.append(f"{letters[answer]}. {choices[answer]}")
        uniform.append(1 / len(letters))
    img = ["img" if it.image is not None else None for it in items]
    return {"metrics": {"accuracy": _mean(correct), **_grouped(correct, img, "accuracy", _mean)},
            "chance": {"accuracy": _mean(uniform), **_grouped(uniform, img, "accuracy", _mean)},
            "counts": {"questions": len(items), "img_questions": sum(g is not None for g in img)}, "writes": [],
            "judged": [(g, float(c)) for g, c in zip(golds, correct)]}


def _mme_core(question: str) -> str:
    return question.replace("Please answer yes or no.", "").strip()


def _mme_ground_truth(root: Path) -> dict:
    """MME's answers as the reference's converter reads them: per subtask folder, the .txt files in
    ``questions_answers_YN/`` (when the folder has ``images/``) or beside the images, each line
    ``question<TAB>Yes|No``. Keyed by (subtask, image stem, question without "Please answer yes or no.")."""
    root = _require(root)
    truth = {}
    for task in sorted(p for p in root.iterdir() if p.is_dir()):
        qa = task / "questions_answers_YN" if (task / "images").is_dir() else task
        for txt in sorted(qa.glob("*.txt")) if qa.is_dir() else []:
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise BenchmarkError(f"{txt}, line {n}: expected 'question<TAB>answer'")
                truth[(task.name, txt.stem, _mme_core(parts[0]))] = parts
    return truth


def _score_mme(spec: dict, items: list[Item], texts: list[str]) -> dict:
    """MME's scores (acc*100 + acc+*100 per subtask; perception and cognition sums) and the per-subtask
    files ``image<TAB>question<TAB>gt<TAB>prediction`` the official ``calculation.py`` reads (an image's
    questions on consecutive lines, as it pairs them)."""
    root = Path(spec.get("annotations", spec["images"]))
    truth = _mme_ground_truth(root)
    records, lines = [], defaultdict(lambda: defaultdict(list))
    for it, t in zip(items, texts):
        image = Path(it.extra["image_file"]).name
        hit = truth.get((it.category, Path(image).stem, _mme_core(it.question)))
        if hit is None:
            raise BenchmarkError(f"{root}: no answer for question {it.question_id!r} "
                                 f"({it.category}/{Path(image).stem}.txt: {it.question!r})")
        question, gt = hit
        records.append({"subtask": it.category, "image": image, "pred": t, "gt": gt})
        pred = t.replace("\t", " ").replace("\n", " ")
        lines[it.category][image].append(f"{image}\t{question}\t{gt}\t{pred}\n")
    try:
        s = scorers.mme_scores(records)
    except ValueError as e:
        raise BenchmarkError(f"{spec['questions']}: {e}") from None
    metrics = {f"score/{k}": float(v) for k, v in sorted(s["subtasks"].items())}
    chance = {k: MME_CHANCE for k in metrics}
    for part, tasks in (("perception", scorers.MME_PERCEPTION), ("cognition", scorers.MME_COGNITION)):
        present = [t for t in tasks if t in s["subtasks"]]
        if present:
            metrics[part], chance[part] = float(s[part]), MME_CHANCE * len(present)
    writes = [(f"mme/{task}.txt", _text_writer("".join(line for group in by_image.values() for line in group)))
              for task, by_image in sorted(lines.items())]
    counts = {"questions": len(items), "subtasks": len(s["subtasks"])}
    judged = [(r["gt"], float(scorers.mme_parse(r["pred"]) == r["gt"].strip().lower())) for r in records]
    return {"metrics": metrics, "chance": chance, "counts": counts, "writes": writes, "judged": judged}


def score(spec: dict, name: str, items: list[Item], answers: list[dict], out_dir: str | Path, *,
          answers_path: str | Path | None = None) -> dict:
    """Score ``answers`` (the parsed lines of an answers JSONL, ``answers_path`` naming it in errors) to
    ``items`` (from :func:`load_items`): ``{"metrics", "chance", "counts", "files"}``, ``files`` being the
    upload/prediction files written into ``out_dir`` (created even when there are none). Nothing is
    written unless every check passed."""
    check_spec(spec, name)
    spec = _with_defaults(spec)
    source = str(answers_path) if answers_path is not None else f"the answers to llava_eval_tasks.{name}"
    texts = _answer_texts(spec["kind"], items, answers, source)
    result = _SCORERS[spec["kind"]](spec, items, texts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for rel, write in result["writes"]:
        with atomic_path(out_dir / rel) as tmp:
            write(tmp)
        files.append(str(out_dir / rel))
    return {"metrics": result["metrics"], "chance": result["chance"], "counts": result["counts"], "files": files,
            "examples": examples(items, texts, result.get("judged"))}


REPORT_EXAMPLES = 8  # questions (spread over the set) kept in a result for the report's grid
MAX_INLINE_IMAGE = 200_000  # bytes: an image given inline (MMBench's base64) is kept for the grid up to this size


def examples(items: list[Item], texts: list[str], judged: list | None, n: int = REPORT_EXAMPLES) -> list[dict]:
    """``n`` questions spread evenly over the set, for the report: image (a path, or ``image_b64`` for an
    inline image), question, model answer, gold answer and the question's score (1: right)."""
    import base64

    if not items:
        return []
    picks = sorted({round(k * (len(items) - 1) / max(1, min(n, len(items)) - 1)) for k in range(min(n, len(items)))})
    out = []
    for i in picks:
        it = items[i]
        e = {"question_id": it.question_id, "question": it.question, "answer": texts[i]}
        if isinstance(it.image, (bytes, bytearray)):
            if len(it.image) <= MAX_INLINE_IMAGE:
                e["image_b64"] = base64.b64encode(it.image).decode()
        elif it.image is not None:
            e["image"] = str(it.image)
        if judged:
            e["gold"], e["score"] = judged[i]
        out.append(e)
    return out


_LOADERS: dict[str, Callable[[dict], list[Item]]] = {
    "vqav2": _jsonl_items, "gqa": _jsonl_items, "textvqa": _load_textvqa, "vizwiz": _jsonl_items, "pope": _load_pope,
    "mmbench": _load_mmbench, "seed": _jsonl_items, "scienceqa": _load_scienceqa, "mme": _load_mme,
    "quilt_vqa": _jsonl_items,
}
_SCORERS: dict[str, Callable[[dict, list, list], dict]] = {
    "vqav2": _score_vqav2, "gqa": _score_gqa, "textvqa": _score_textvqa, "vizwiz": _score_vizwiz, "pope": _score_pope,
    "mmbench": _score_mmbench, "seed": _score_seed, "scienceqa": _score_scienceqa, "mme": _score_mme,
    "quilt_vqa": _score_quilt_vqa,
}
