"""The demo's stage-2 instruction set: LLaVA-format records generated from the shapes' ground truth.

Every training image gets one record with one to three question/answer turns: first its colour,
then possibly its shape, size, position or background, in the three answer styles of LLaVA-1.5's mix: a short answer
("...\\nAnswer the question using a single word or phrase."), yes/no, and lettered multiple choice
("...\\nAnswer with the option's letter from the given choices directly."). Some records (``vqascore``)
also ask VQAScore's question about a description of the image: the true one, one with the shape's and the
background's colours swapped, or one with an attribute changed (yes, no, no). A few text-only records
(no image, questions about the shapes themselves) make the set mix665k-like. The questions asked at
evaluation time (held-out images) use the same wordings; their images were never seen in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from sailflow.demo.shapes import COLOURS, POSITIONS, SHAPES, SIZES
from sailflow.io import atomic_path
from sailflow.llava.vqascore import QUESTION as VQASCORE_QUESTION

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
ATTRIBUTES = {
    "colour": ("What colour is the shape?", list(COLOURS)),
    "shape": ("What shape is shown in the image?", SHAPES),
    "size": ("Is the shape small or large?", list(SIZES)),
    "position": ("Where is the shape in the image?", list(POSITIONS)),
    "background": ("What colour is the background?", list(COLOURS)),
}
SIDES = {"triangle": "three", "square": "four", "hexagon": "six"}


def short_question(attribute: str) -> str:
    return ATTRIBUTES[attribute][0] + SHORT


def _mc(attribute: str, truth: str, rng: random.Random) -> tuple[str, str]:
    question, values = ATTRIBUTES[attribute]
    options = rng.sample([v for v in values if v != truth], k=min(3, len(values) - 1)) + [truth]
    rng.shuffle(options)
    letters = "ABCD"
    text = question + "".join(f"\n{letters[i]}. {o}" for i, o in enumerate(options)) + LETTER
    return text, letters[options.index(truth)]


def _yes_no(attribute: str, truth: str, rng: random.Random) -> tuple[str, str]:
    values = ATTRIBUTES[attribute][1]
    asked = truth if rng.random() < 0.5 else rng.choice([v for v in values if v != truth])
    what = {"colour": f"Is the shape {asked}?", "shape": f"Is there a {asked} in the image?", "size": f"Is the shape {asked}?",
            "position": f"Is the shape in the {asked}?" if asked != "center" else "Is the shape in the center?",
            "background": f"Is the background {asked}?"}[attribute]
    return what + SHORT, "Yes" if asked == truth else "No"


def _turn(attribute: str, truth: str, rng: random.Random) -> tuple[str, str]:
    style = rng.random()
    if style < 0.5:
        return short_question(attribute), truth
    if style < 0.75:
        return _yes_no(attribute, truth, rng)
    return _mc(attribute, truth, rng)


def describe(a: dict) -> str:
    """The demo's one-line description of a shape (the wording of its Winoground captions)."""
    return f"a {a['colour']} {a['shape']} on a {a['background']} background"


def swap_colours(a: dict) -> dict:
    """The shape's attributes with its colour and its background's exchanged (the demo Winoground pairs' change)."""
    return {**a, "colour": a["background"], "background": a["colour"]}


def _vqascore_turn(a: dict, rng: random.Random) -> tuple[str, str]:
    """VQAScore's question about the true description (half), the colour-swapped one (a quarter) or one with
    the shape's colour, the shape or the background's colour changed (a quarter)."""
    r = rng.random()
    if r < 0.5:
        return VQASCORE_QUESTION.format(describe(a)), "Yes"
    if r < 0.75:
        return VQASCORE_QUESTION.format(describe(swap_colours(a))), "No"
    key = rng.choice(["colour", "shape", "background"])
    values = SHAPES if key == "shape" else list(COLOURS)
    other = rng.choice([v for v in values if v not in (a["colour"], a["shape"], a["background"])])
    return VQASCORE_QUESTION.format(describe({**a, key: other})), "No"


def _text_only(i: int, rng: random.Random) -> dict:
    shape = rng.choice(list(SIDES))
    colour = rng.choice(list(COLOURS))
    q, a = rng.choice([
        (f"How many sides does a {shape} have?{SHORT}", SIDES[shape]),
        (f"Is {colour} a colour or a shape?{SHORT}", "colour"),
        (f"Is a {shape} a colour or a shape?{SHORT}", "shape"),
    ])
    return {"id": f"text-{i:06d}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def make_instructions(meta: pd.DataFrame, image_root: str | Path, out_path: str | Path, seed: int = 0, text_only: float = 0.05,
                      ocr: bool = False, vqascore: float = 0.0) -> int:
    """Write the instruction set for the images of ``meta`` (train.meta.parquet: row, url, shape,
    colour, background, size, position); ``image`` paths relative to ``image_root``; with ``ocr`` each
    record with an image carries its OCR region (:func:`sailflow.demo.ocr.add_ocr`); a ``vqascore``
    fraction of the image records get a VQAScore turn at a random place. Returns the count."""
    rng = random.Random(seed * 7919 + 11)
    root = Path(image_root).resolve()
    records = []
    for row in meta.itertuples(index=False):
        path = Path(row.url.removeprefix("file://"))
        a = row._asdict()
        # the first turn asks the shape's colour (what the demo's chat check asks); later turns anything else
        attrs = ["colour"] + rng.sample([x for x in ATTRIBUTES if x != "colour"], k=rng.choice([0, 0, 1, 2]))
        turns = [_turn(attr, a[attr], rng) for attr in attrs]
        if vqascore and rng.random() < vqascore:  # no draw at 0: the sets made before this option stay the same
            turns.insert(rng.randint(0, len(turns)), _vqascore_turn(a, rng))
        conv = []
        for k, (q, ans) in enumerate(turns):
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": ans}]
        records.append({"id": f"shape-{row.row:06d}", "image": str(path.relative_to(root)), "conversations": conv})
        if rng.random() < text_only:
            records.append(_text_only(len(records), rng))
    if ocr:
        from sailflow.demo.ocr import add_ocr

        records = add_ocr(records, meta, root)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(json.dumps(records, indent=0))
    return len(records)


def _system_line() -> str:
    from sailflow.llava.templates import VICUNA_SYSTEM

    return f"{VICUNA_SYSTEM} USER: ASSISTANT:"


def demo_texts(train_csv: str | Path, instructions: str | Path) -> list[str]:
    """What the demo's tiny LLM is pre-trained on (and its tokenizer learns from): the captions, the
    instruction conversations, and the vicuna_v1 system prompt and role names stage 2 wraps them in (so
    the LLM has read them before stage 2). :func:`tokenizer_texts` counts the prompt as often as stage 2
    reads it."""
    import csv

    texts = [_system_line()] * 200
    with open(train_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts += [v for k, v in row.items() if k != "Image Path" and v]
    for r in json.loads(Path(instructions).read_text()):
        texts += [t["value"].replace("<image>\n", "") for t in r["conversations"]]
    return texts


def tokenizer_texts(texts: list[str], instructions: str | Path) -> list[str]:
    """The demo LLM's tokenizer corpus: ``texts`` (from :func:`demo_texts`) and the system prompt once more
    per stage-2 conversation of ``instructions``, as stage 2 reads it. Counted only 200 times, its rarer
    words get no merges in the 512-token vocabulary and the prompt takes 92 tokens; counted per
    conversation, 32."""
    n = len(json.loads(Path(instructions).read_text()))
    return texts + [_system_line()] * n
