"""The demo's LLaVA benchmark sets, drawn from held-out shapes, in the real benchmarks' file formats
(so the same readers and scorers run on them as on VQAv2, POPE and MMBench):

    images/                                        the held-out shapes the question files refer to
    vqa/questions.jsonl + vqa/annotations.json     VQAv2: LLaVA question file, official annotations with 10
                                                   human-style answers (synonyms where a shape allows several
                                                   wordings: "violet" for purple, "plus sign" for a cross, ...)
    pope/llava_pope_test.jsonl + pope/coco/coco_pope_{random,popular,adversarial}.json
                                                   POPE: yes/no, 50/50; the "no" colour is random (random), the
                                                   most frequent other colour (popular), or the background's
                                                   colour, present in the image but not the shape's (adversarial)
    mc/mmbench_dev.tsv                             MMBench: lettered options A-D, base64 images; the reader
                                                   adds the circular rotations
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pandas as pd

from sailflow.demo.instructions import ATTRIBUTES, SHORT
from sailflow.demo.shapes import COLOURS
from sailflow.io import atomic_path, write_json, write_jsonl

# Other wordings a person might give (the 10 answers of a VQA question mix them with the usual word).
SYNONYMS = {"purple": ["violet"], "orange": ["amber"], "green": ["dark green"], "white": ["light grey"],
            "circle": ["round", "disc"], "square": ["box"], "cross": ["plus sign", "plus"], "star": ["star shape"],
            "hexagon": ["hexagonal shape"], "triangle": ["triangle shape"]}
POPE_CATEGORIES = ("random", "popular", "adversarial")


def _human_answers(truth: str, rng: random.Random) -> list[str]:
    """Ten answers: mostly the usual word (some capitalised or with a period, as people type), a few synonyms."""
    alts = SYNONYMS.get(truth, [])
    n_alt = rng.choice([0, 0, 1, 2, 3]) if alts else 0
    out = [rng.choice(alts) for _ in range(n_alt)]
    out += [rng.choice([truth, truth, truth.capitalize(), truth + "."]) for _ in range(10 - n_alt)]
    rng.shuffle(out)
    return out


def _source(url: str) -> Path:
    """The held-out image a file:// URL of the shapes' table points to."""
    return Path(url.removeprefix("file://"))


def vqa_set(meta: pd.DataFrame, root: Path, rng: random.Random) -> None:
    questions, annotations = [], []
    for k, row in enumerate(meta.itertuples(index=False)):
        attribute = "colour" if k % 2 == 0 else "shape"
        truth = getattr(row, attribute)
        qid = 1_000 + k
        questions.append({"question_id": qid, "image": _source(row.url).name, "text": ATTRIBUTES[attribute][0] + SHORT,
                          "category": attribute})
        annotations.append({"question_id": qid, "image_id": int(row.row), "answer_type": "other",
                            "question_type": "what color is the" if attribute == "colour" else "what shape is",
                            "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(_human_answers(truth, rng))]})
    write_jsonl(root / "questions.jsonl", questions)
    write_json(root / "annotations.json", {"annotations": annotations})


def pope_set(meta: pd.DataFrame, root: Path, rng: random.Random, popular: list[str]) -> None:
    questions, per_category = [], {c: [] for c in POPE_CATEGORIES}
    for k, row in enumerate(meta.itertuples(index=False)):
        category = POPE_CATEGORIES[k % 3]
        others = [c for c in COLOURS if c not in (row.colour, row.background)]
        no = {"random": rng.choice(others), "popular": next(c for c in popular if c in others), "adversarial": row.background}[category]
        asked = [(row.colour, "yes"), (no, "no")]
        rng.shuffle(asked)
        for j, (colour, label) in enumerate(asked):
            q = {"question_id": 10 * (1_000 + k) + j, "image": _source(row.url).name, "text": f"Is the shape {colour}?" + SHORT,
                 "category": category}
            questions.append(q)
            per_category[category].append({**q, "label": label})
    write_jsonl(root / "llava_pope_test.jsonl", questions)
    for category, lines in per_category.items():
        write_jsonl(root / "coco" / f"coco_pope_{category}.json", lines)


def mc_set(meta: pd.DataFrame, path: Path, rng: random.Random) -> None:
    rows = []
    question, values = ATTRIBUTES["colour"]
    for k, row in enumerate(meta.itertuples(index=False)):
        options = rng.sample([v for v in values if v not in (row.colour, row.background)], k=3) + [row.colour]
        rng.shuffle(options)
        image = base64.b64encode(_source(row.url).read_bytes()).decode()
        rows.append({"index": k, "question": question, "hint": "nan", **dict(zip("ABCD", options)),
                     "answer": "ABCD"[options.index(row.colour)], "category": "colour", "l2-category": "attribute",
                     "image": image, "source": "sailflow demo", "split": "dev"})
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)


def _copy_images(meta: pd.DataFrame, image_dir: Path) -> None:
    import shutil

    image_dir.mkdir(parents=True, exist_ok=True)
    for url in meta["url"]:
        shutil.copyfile(_source(url), image_dir / _source(url).name)


def make_llava_eval_sets(heldout_meta: str | Path, train_meta: str | Path, out: dict, n: dict, seed: int) -> None:
    """Write the three sets; ``out`` maps images, vqa, pope (folders) and mc (a TSV path); ``n`` the
    questions (images) per set. Images are the held-out shapes after the first 200 (the chat check's)."""
    meta = pd.read_parquet(heldout_meta)
    popular = pd.read_parquet(train_meta)["colour"].value_counts().index.tolist()
    pool = meta.iloc[200:] if len(meta) > 200 + max(n.values()) else meta
    rng = random.Random(seed * 1_000_003 + 17)
    _copy_images(pool.iloc[: max(n["vqa"], n["pope"])], Path(out["images"]))
    vqa_set(pool.iloc[: n["vqa"]], Path(out["vqa"]), rng)
    pope_set(pool.iloc[: n["pope"]], Path(out["pope"]), rng, popular)
    mc_set(pool.iloc[: n["mc"]], Path(out["mc"]), rng)
