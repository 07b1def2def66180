"""Ask a trained LLaVA run about an image, from the command line (greedy, streamed):

    python -m sailflow.chat results/llava_demo shape.png "What colour is the shape?"

The first argument is a run folder (its finetune stage is used, else its pretrain stage) or a stage
folder. Without a question, questions are read from stdin, one per line.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sailflow.chat", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="results/<run> or a stage folder (results/<run>/llava/finetune)")
    ap.add_argument("image", help="an image file")
    ap.add_argument("question", nargs="?", help="the question (default: read questions from stdin)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    a = ap.parse_args(argv)
    from sailflow.llava.generate import VisionLanguageModel

    vlm = VisionLanguageModel.from_run(a.run, device=a.device)
    questions = [a.question] if a.question else (q.strip() for q in sys.stdin if q.strip())
    for q in questions:
        vlm.chat(a.image, q, max_new_tokens=a.max_new_tokens, stream=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
