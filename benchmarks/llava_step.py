"""LLaVA stage-2 step throughput, side by side in one run (prints one JSON line):

1. the modality-length grouped sampler (LLaVA's) against a random sampler: tokens/s of real (non-pad)
   tokens through forward + backward + optimizer step, and the padding fraction of each;
2. the step fed by the DataLoader (decode, preprocess, collate) against the same step on batches
   already in memory: ``loader_overhead`` = time with the loader / time in memory (goal <= 1.1);
3. with a GPU: tokens/s and MFU of a Qwen2-1.5B-shaped LLM (random weights, bf16) with flash-attn 2
   against SDPA (null without a GPU or without flash-attn).

A synthetic mix665k-like set: coloured images with one-to-four-turn conversations of varied length, and
a share of long text-only conversations; a tiny CLIP tower and a small LLaMA (CPU-sized).

    python benchmarks/llava_step.py [--records 384] [--batch 16] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_set(root: Path, n: int, seed: int = 0) -> tuple[Path, list[str]]:
    from PIL import Image

    rng = random.Random(seed)
    words = "the a red green blue shape square circle image colour small large left right top bottom is what where".split()
    (root / "img").mkdir(parents=True)
    recs, texts = [], []
    for i in range(n):
        def sentence(k):
            return " ".join(rng.choice(words) for _ in range(k)).capitalize() + "."
        turns = []
        for t in range(rng.randint(1, 4)):
            q, a = sentence(rng.randint(4, 12)) + "?", sentence(rng.choice([1, 2, 8, 30]))
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            texts += [q, a]
        if rng.random() < 0.3:  # text-only, longer (ShareGPT-like)
            recs.append({"id": f"t{i}", "conversations": turns * 2})
        else:
            Image.new("RGB", (40, 40), tuple(rng.randrange(256) for _ in range(3))).save(root / "img" / f"{i}.png")
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
            recs.append({"id": f"r{i}", "image": f"img/{i}.png", "conversations": turns})
    p = root / "records.json"
    p.write_text(json.dumps(recs))
    return p, texts


def build(root: Path, texts: list[str]):
    from sailflow.backbones.tiny import build_tiny
    from sailflow.llava.connectors import build_connector
    from sailflow.llava.model import LlavaModel
    from sailflow.llava.tiny import build_tiny_llm, train_tokenizer
    from sailflow.llava.towers import load_tower
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clip = build_tiny("clip", root / "clip", image_size=32, patch_size=8)
    train_tokenizer(texts + ["A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:"] * 50,
                    root / "tok", vocab_size=512)
    build_tiny_llm("llama", root / "llm", root / "tok", hidden_size=256, layers=4, heads=4, seed=0)
    tower = load_tower({"kind": "clip", "name": "clip", "layer": -2,
                        "backbone": {"kind": "vision", "family": "clip", "path": str(clip), "pooling": "pooler"}},
                       image_aspect_ratio="pad")
    llm = AutoModelForCausalLM.from_pretrained(str(root / "llm"), attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(str(root / "llm"))
    connector = build_connector("mlp2x_gelu", tower.hidden_size, llm.config.hidden_size, tower.n_tokens)
    return LlavaModel(tower, connector, llm, n_image_tokens=tower.n_tokens, max_length=1024), tok, tower


def step_fn(model, opt):
    def step(batch):
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def run_batches(step, batches) -> tuple[float, int, int]:
    """(seconds, real tokens, padded tokens) over ``batches`` (the first one is a warm-up, not timed)."""
    step(batches[0])
    t = time.perf_counter()
    real = pad = 0
    for b in batches[1:]:
        step(b)
        real += int(b["attention_mask"].sum())
        pad += int(b["attention_mask"].numel())
    return time.perf_counter() - t, real, pad


def gpu_mfu(steps: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                      vocab_size=151936, max_position_embeddings=4096)
    out = {}
    for attn in ("sdpa", "flash_attention_2"):
        try:
            m = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.bfloat16).cuda()
        except Exception as e:  # noqa: BLE001 - flash-attn not installed or not supported here
            out[attn] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
            continue
        m.gradient_checkpointing_enable()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        x = torch.randint(0, cfg.vocab_size, (4, 2048), device="cuda")
        for i in range(steps + 2):
            if i == 2:
                torch.cuda.synchronize()
                t = time.perf_counter()
            m(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        tps = steps * x.numel() / (time.perf_counter() - t)
        n = sum(p.numel() for p in m.parameters())
        peak = 989e12  # H100/H200 dense bf16
        out[attn] = {"tokens_per_s": round(tps), "mfu": round(6 * n * tps / peak, 3), "params": n}
        del m, opt
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=384)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--gpu-steps", type=int, default=5)
    a = ap.parse_args()
    from sailflow.llava.data import LlavaDataset, ModalityLengthGroupedSampler, collate, read_records
    from sailflow.llava.templates import get_template

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        path, texts = make_set(root, a.records)
        model, tok, tower = build(root, texts)
        recs, _ = read_records(path, root)
        ds = LlavaDataset(recs, get_template("v1", tok), tower.preprocess, model.n_image_tokens, 1024, tower.image_size,
                          log=open("/dev/null", "w"))
        model.multi_modal_projector.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        step = step_fn(model.train(), opt)
        n = a.steps + 1
        collate_fn = lambda b: collate(b, tok.pad_token_id)  # noqa: E731

        samplers = {
            "grouped": ModalityLengthGroupedSampler(ds.modality_lengths, a.batch, 1, seed=0),
            "random": torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0)),
        }
        res = {}
        for name, sampler in samplers.items():
            order = list(sampler)
            batches = [collate_fn([ds[i] for i in order[k * a.batch:(k + 1) * a.batch]]) for k in range(n)]
            secs, real, padded = run_batches(step, batches)
            res[name] = {"tokens_per_s": round(real / secs, 1), "padding_fraction": round(1 - real / padded, 3)}

        # the same steps, fed by the DataLoader (2 workers decode and collate while the step runs)
        order = list(samplers["grouped"])
        in_memory = [collate_fn([ds[i] for i in order[k * a.batch:(k + 1) * a.batch]]) for k in range(n)]
        mem_s, _, _ = run_batches(step, in_memory)
        loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, sampler=order[: n * a.batch], collate_fn=collate_fn,
                                             num_workers=2, persistent_workers=False, prefetch_factor=2)
        it = iter(loader)
        step(next(it))  # warm-up (starts the workers)
        t = time.perf_counter()
        for b in it:
            step(b)
        loader_s = time.perf_counter() - t

    print(json.dumps({
        "benchmark": "llava_step", "records": a.records, "batch": a.batch, "steps": a.steps, "threads": torch.get_num_threads(),
        "grouped_tokens_per_s": res["grouped"]["tokens_per_s"], "random_tokens_per_s": res["random"]["tokens_per_s"],
        "grouped_over_random": round(res["grouped"]["tokens_per_s"] / res["random"]["tokens_per_s"], 2),
        "grouped_padding_fraction": res["grouped"]["padding_fraction"], "random_padding_fraction": res["random"]["padding_fraction"],
        "loader_s": round(loader_s, 3), "in_memory_s": round(mem_s, 3), "loader_overhead": round(loader_s / mem_s, 3),
        "gpu_qwen2_1p5b": gpu_mfu(a.gpu_steps),
    }))


if __name__ == "__main__":
    main()
