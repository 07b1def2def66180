"""The embedded demo as `make demo` runs it: the llava_demo chat model answers questions about held-out
shapes it never saw, and gets their colour right far more often than chance."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


def test_chat_names_the_colour_of_held_out_shapes_better_than_chance(demo, monkeypatch):
    from sailflow.demo.instructions import short_question
    from sailflow.demo.shapes import COLOURS
    from sailflow.llava.generate import VisionLanguageModel

    workdir, cfg = demo
    monkeypatch.chdir(workdir)
    meta = pd.read_parquet("results/demo/shapes/eval.meta.parquet").head(200)  # held out: never in training
    images = [u.removeprefix("file://") for u in meta["url"]]
    vlm = VisionLanguageModel.from_run("results/llava_demo", device="cpu")
    answers = vlm.generate(images, [short_question("colour")] * len(images), max_new_tokens=8)
    acc = sum(a.strip().lower() == c for a, c in zip(answers, meta["colour"])) / len(images)
    chance = 1 / (len(COLOURS) - 1)  # a guess among the colours the background is not
    sigma = math.sqrt(chance * (1 - chance) / len(images))
    assert acc > chance + 5 * sigma, (acc, chance, answers[:10])  # > 0.27 at 200 images; the demo reaches about 0.8

    # the command line a user types: a streamed answer, the same as the Python API's
    out = subprocess.run([sys.executable, "-m", "sailflow.chat", "results/llava_demo", images[0], short_question("colour")],
                         capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1].strip() == answers[0]
