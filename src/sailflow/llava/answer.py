"""Answer a benchmark's questions with a trained LLaVA stage: LLaVA's answers JSONL, greedy.

One line per question, in the question file's order::

    {"question_id": ..., "prompt": "<question + response suffix>", "text": "<model answer>",
     "answer_id": "<stable id>", "model_id": "<run>", "metadata": {...}}

as LLaVA's ``model_vqa_loader.py`` writes it (so the official converters and servers take it too).
The protocol is LLaVA-1.5's (``docs/Evaluation.md``): greedy decoding (temperature 0, one beam), the
run's template (vicuna_v1 for LLaVA-1.5), ``"<image>\\n" + question + suffix``, images preprocessed as
in training. Unlike the reference (batch size 1) questions are batched with left padding, which gives
the same answers (tests/test_llava_eval.py); they are sorted by prompt length first so a batch holds
prompts of similar length, and written back in question order. An encoder-decoder run (CLIP-FlanT5:
``t5_v1``) is answered the same way: the prompt is the encoder's input (right-padded: T5's position
bias is relative, so padding changes nothing), the decoder generates greedily from its start token
(tests/test_llava_t5.py checks batched = one at a time). CLIP-FlanT5's own VQA loader is unfinished
(it drops ``max_new_tokens``); here the settings apply as for any run.

On several devices the questions are split into contiguous chunks (``ceil(n / K)``, as the reference's
``--num-chunks``), one process per device, and the parts are merged back in question order.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from sailflow.io import write_jsonl


def answer_id(model_id: str, question_id, prompt: str) -> str:
    """A stable id (the reference draws a random shortuuid): the same run and question give the same id
    (the prompt too: TextVQA's question ids are image ids, shared by an image's questions)."""
    return hashlib.sha1(f"{model_id}\0{question_id}\0{prompt}".encode()).hexdigest()[:22]


def answer_lines(vlm, items, suffix: str, max_new_tokens: int, batch_size: int, model_id: str, progress=None) -> list[dict]:
    """Answers of ``vlm`` (a :class:`sailflow.llava.generate.VisionLanguageModel`) to ``items``
    (:class:`sailflow.llava.benchmarks.Item`), in the items' order."""
    prompts = [it.question + suffix for it in items]
    order = sorted(range(len(items)), key=lambda i: len(vlm.prompt_ids(prompts[i], items[i].image is not None)))
    texts: list[str | None] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        out = vlm.generate([items[i].image for i in batch], [prompts[i] for i in batch], max_new_tokens=max_new_tokens,
                           batch_size=len(batch))
        for i, t in zip(batch, out):
            texts[i] = t
        if progress is not None:
            progress.update(len(batch))
    return [{"question_id": it.question_id, "prompt": p, "text": t, "answer_id": answer_id(model_id, it.question_id, p),
             "model_id": model_id, "metadata": {"category": it.category} if it.category is not None else {}}
            for it, p, t in zip(items, prompts, texts)]


def chunks(n: int, k: int) -> list[range]:
    """The reference's split: contiguous chunks of ``ceil(n / k)`` questions."""
    size = max(1, math.ceil(n / k))
    return [range(i, min(i + size, n)) for i in range(0, n, size)][:k]


def _answer_into(stage: str, device: str, items, settings: dict, out_path: str | Path, log, desc: str = "answers") -> list[dict]:
    """Load the stage on ``device``, answer ``items`` and write their answers JSONL to ``out_path``."""
    from tqdm import tqdm

    from sailflow.llava.generate import VisionLanguageModel

    vlm = VisionLanguageModel.from_run(stage, device=device)
    with tqdm(total=len(items), desc=desc, file=log, mininterval=30) as bar:
        lines = answer_lines(vlm, items, settings["suffix"], settings["max_new_tokens"], settings["batch_size"], settings["model_id"], bar)
    write_jsonl(out_path, lines)
    return lines


def _worker(rank: int, stage: str, device: str, items, settings: dict, part: str, log_path: str | None) -> None:
    """One device's process: its share of the CPU threads, its progress appended to the job's log."""
    import torch

    torch.set_num_threads(settings["threads"])
    log = open(log_path, "a") if log_path else None
    _answer_into(stage, device, items, settings, part, log, desc=f"answers [{rank}]")


def answer_file(stage: str | Path, items, out_path: str | Path, *, suffix: str, max_new_tokens: int, batch_size: int,
                model_id: str, devices: list[str], log=None) -> int:
    """Write the answers JSONL of ``items`` to ``out_path``: in this process on ``devices[0]``, or one
    process per device with the parts merged in question order. Returns the number of answers."""
    settings = {"suffix": suffix, "max_new_tokens": int(max_new_tokens), "batch_size": int(batch_size), "model_id": model_id}
    if len(devices) <= 1:
        return len(_answer_into(str(stage), devices[0] if devices else "cpu", items, settings, out_path, log))
    import os

    import torch.multiprocessing as mp

    out_path = Path(out_path)
    parts = [out_path.with_name(f".{out_path.name}.part{r}") for r in range(len(devices))]
    settings["threads"] = max(1, (os.cpu_count() or 1) // len(devices))
    ctx = mp.get_context("spawn")
    procs = []
    for r, (rows, device) in enumerate(zip(chunks(len(items), len(devices)), devices)):
        p = ctx.Process(target=_worker, args=(r, str(stage), device, [items[i] for i in rows], settings, str(parts[r]),
                                              getattr(log, "name", None)))
        p.start()
        procs.append(p)
    for p in procs:
        p.join()
    failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"answer process(es) {failed} on {[devices[r] for r in failed]} failed; their errors are in this log")
    from sailflow.llava.benchmarks import read_answers

    lines = [x for part in parts[: len(procs)] for x in read_answers(part)]
    if [x["question_id"] for x in lines] != [it.question_id for it in items]:
        raise RuntimeError("the merged answer parts are not in question order")  # a bug, never a silent misalignment
    write_jsonl(out_path, lines)
    for part in parts:
        part.unlink(missing_ok=True)
    return len(lines)
