"""The demo's stage-2 instruction set: every answer follows from the shape's ground truth."""

import json
import re

import pandas as pd

from sailflow.demo.instructions import LETTER, SHORT, describe, make_instructions
from sailflow.demo.shapes import COLOURS, POSITIONS, SHAPES, SIZES
from sailflow.llava.vqascore import QUESTION


def _meta(tmp_path, n: int) -> pd.DataFrame:
    colours = list(COLOURS)  # colour 3i+1 and background i (mod 8) never coincide: 2i + 1 is odd
    return pd.DataFrame([{"row": i, "url": f"file://{tmp_path}/images/{i:06d}.png", "shape": SHAPES[i % len(SHAPES)],
                          "colour": colours[(3 * i + 1) % 8], "background": colours[i % 8], "size": list(SIZES)[i % 2],
                          "position": list(POSITIONS)[i % len(POSITIONS)]} for i in range(n)])


def _records(tmp_path, meta, **kwargs) -> list[dict]:
    out = tmp_path / "instruct.json"
    n = make_instructions(meta, tmp_path, out, seed=3, **kwargs)
    records = json.loads(out.read_text())
    assert len(records) == n
    return records


def _colour_answer(question: str, truth: str) -> str:
    """What the first turn (the shape's colour, in any of the three styles) must answer."""
    if question.endswith(LETTER):
        options = dict(re.findall(r"\n([ABCD])\. ([a-z ]+)", question))
        return next(letter for letter, value in options.items() if value == truth)
    asked = re.fullmatch(r"Is the shape ([a-z]+)\?" + re.escape(SHORT), question)
    if asked:
        return "Yes" if asked.group(1) == truth else "No"
    assert question == "What colour is the shape?" + SHORT
    return truth


def test_answers_follow_from_the_ground_truth_and_vqascore_turns_judge_descriptions(tmp_path):
    meta = _meta(tmp_path, 400)
    truth = {f"shape-{r.row:06d}": r._asdict() for r in meta.itertuples(index=False)}
    records = _records(tmp_path, meta, vqascore=1.0)
    verdicts = {"true": [], "swapped": [], "changed": []}
    for rec in records:
        turns = rec["conversations"]
        if "image" not in rec:
            assert all("<image>" not in t["value"] for t in turns)
            continue
        a = truth[rec["id"]]
        assert rec["image"] == f"images/{a['row']:06d}.png"
        humans, answers = [t["value"] for t in turns[0::2]], [t["value"] for t in turns[1::2]]
        assert humans[0].startswith("<image>\n") and all("<image>" not in h for h in humans[1:])
        humans[0] = humans[0].removeprefix("<image>\n")
        vq = [(h, ans) for h, ans in zip(humans, answers) if h.startswith("Does this figure show")]
        assert len(vq) == 1  # vqascore=1.0: one VQAScore turn in every image record
        (question, answer), = vq
        said = re.fullmatch(re.escape(QUESTION).replace(r"\{\}", "(.+)"), question).group(1)
        swapped = describe({**a, "colour": a["background"], "background": a["colour"]})
        kind = "true" if said == describe(a) else "swapped" if said == swapped else "changed"
        verdicts[kind].append(answer)
        others = [(h, ans) for h, ans in zip(humans, answers) if not h.startswith("Does this figure show")]
        assert others[0][1] == _colour_answer(others[0][0], a["colour"])  # the first non-VQAScore turn: the colour
    assert set(verdicts["true"]) == {"Yes"} and set(verdicts["swapped"]) == {"No"} and set(verdicts["changed"]) == {"No"}
    n = sum(map(len, verdicts.values()))
    assert n == len(meta) and 0.4 < len(verdicts["true"]) / n < 0.6 and len(verdicts["swapped"]) > 0.15 * n


def test_without_vqascore_turns_no_record_asks_it(tmp_path):
    records = _records(tmp_path, _meta(tmp_path, 200), vqascore=0.0)
    assert not any("Does this figure show" in t["value"] for r in records for t in r["conversations"])
    records = _records(tmp_path, _meta(tmp_path, 200), vqascore=0.5)
    with_vq = sum(any("Does this figure show" in t["value"] for t in r["conversations"]) for r in records if "image" in r)
    assert 60 < with_vq < 140  # about half of the 200 image records
