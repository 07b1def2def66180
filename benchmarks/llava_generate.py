"""LLaVA evaluation throughput, side by side in one run (prints one JSON line):

1. answers/s of batched greedy generation (left padding, prompts sorted by length; what the
   llava_answers rule does) against one question at a time (LLaVA-1.5's scripts) on the same questions,
   checking that both give the same answers;
2. VQAScore pairs/s with the image and the prompt before it computed once for the N texts scored
   against it (the prefix's key/value cache: what the llava_vqascore rule does) against re-encoding the
   image and running the whole prompt for every pair (and, in between, sharing the image features
   only), checking equal scores.

The two modes of each comparison alternate over several rounds and the ratio is the median of the
per-round ratios, so other jobs on a busy machine slow both sides alike. A tiny CLIP tower and a
LLaMA (tests/llava_parts.py), the tower giving ``--image-tokens`` tokens per image, so that the image is
most of a VQAScore prompt as in LLaVA-1.5; trained for one short stage 2 so that it stops on its own.

    python benchmarks/llava_generate.py [--questions 48] [--batch 16] [--rounds 3] [--image-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def train_stage2(root: Path, image_tokens: int) -> Path:
    from llava_parts import build_parts, stage_args

    from sailflow.llava.train import train_stage

    side = int(round(image_tokens ** 0.5))
    parts = build_parts(root, image_size=4 * side, patch_size=4)
    devnull = open(os.devnull, "w")
    pre = root / "pretrain"
    train_stage(stage_args(parts, "pretrain", pre, epochs=1, max_length=1024), log=devnull)
    fin = root / "finetune"
    args = stage_args(parts, "finetune", fin, epochs=2, max_length=1024)
    args["previous"] = str(pre)
    train_stage(args, log=devnull)
    return fin, parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--texts", type=int, default=16, help="VQAScore texts per image")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-tokens", type=int, default=256, help="tower tokens per image (LLaVA-1.5: 576 of a pair's ~640)")
    a = ap.parse_args()

    import torch

    from sailflow.llava.answer import answer_lines
    from sailflow.llava.benchmarks import Item
    from sailflow.llava.generate import VisionLanguageModel
    from sailflow.llava.vqascore import vqascore_pairs

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        stage, parts = train_stage2(Path(tmp), a.image_tokens)
        vlm = VisionLanguageModel.from_run(stage, device="cpu")
        images = sorted(str(p) for p in (Path(parts["images"]) / "img").glob("*.png"))
        qs = ["What colour is the square?", "Is it a square?", "Name a colour.", "Is the square red or blue? Answer with one word please."]
        items = [Item(question_id=i, image=images[i % len(images)], question=qs[i % len(qs)]) for i in range(a.questions)]
        texts = [f"a {c} square number {k}" for k in range(a.texts // 4 + 1) for c in ("red", "green", "blue", "yellow")][: a.texts]
        gen_ratios, vqa_ratios, same_answers, same_scores = [], [], True, True
        t_gen = {"batched": [], "single": []}
        t_vqa = {"shared": [], "features": [], "reencoded": []}
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            batched = answer_lines(vlm, items, "", 12, a.batch, "bench")
            t1 = time.perf_counter()
            single = answer_lines(vlm, items, "", 12, 1, "bench")
            t2 = time.perf_counter()
            same_answers &= batched == single
            t_gen["batched"].append(t1 - t0)
            t_gen["single"].append(t2 - t1)
            gen_ratios.append((t2 - t1) / (t1 - t0))

            t0 = time.perf_counter()
            shared = vqascore_pairs(vlm, images[: a.images], [texts] * a.images, batch_size=a.texts)
            t1 = time.perf_counter()
            again = vqascore_pairs(vlm, images[: a.images], [texts] * a.images, batch_size=a.texts, share="none")
            t2 = time.perf_counter()
            feats = vqascore_pairs(vlm, images[: a.images], [texts] * a.images, batch_size=a.texts, share="features")
            t3 = time.perf_counter()
            same_scores &= all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) and torch.allclose(z, y, rtol=1e-5, atol=1e-7)
                               for x, y, z in zip(shared, again, feats))
            t_vqa["shared"].append(t1 - t0)
            t_vqa["reencoded"].append(t2 - t1)
            t_vqa["features"].append(t3 - t2)
            vqa_ratios.append((t2 - t1) / (t1 - t0))
    pairs = a.images * a.texts
    print(json.dumps({
        "benchmark": "llava_generate",
        "questions": a.questions, "batch_size": a.batch, "rounds": a.rounds, "image_tokens": a.image_tokens,
        "answers_per_s_batched": round(a.questions / statistics.median(t_gen["batched"]), 2),
        "answers_per_s_one_at_a_time": round(a.questions / statistics.median(t_gen["single"]), 2),
        "batched_speedup": round(statistics.median(gen_ratios), 2),
        "same_answers": same_answers,
        "vqascore_pairs_per_s_shared_prefix": round(pairs / statistics.median(t_vqa["shared"]), 2),
        "vqascore_pairs_per_s_shared_features": round(pairs / statistics.median(t_vqa["features"]), 2),
        "vqascore_pairs_per_s_reencoded": round(pairs / statistics.median(t_vqa["reencoded"]), 2),
        "vqascore_shared_speedup": round(statistics.median(vqa_ratios), 2),
        "same_scores": same_scores,
        "device": "cpu", "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
