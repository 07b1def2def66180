"""The demo's LLM and the tests' LLMs, built here from nothing (nothing is downloaded):

    train_tokenizer   byte-level BPE (``tokenizers``) on the demo's own text -> PreTrainedTokenizerFast
    build_tiny_llm    a Llama / Qwen2 with random weights from a config, saved as a hub model is
    pretrain_lm       a brief causal-LM pre-training on the same text, so LLaVA stage 1 aligns images
                      to a frozen LM that already knows the words (as LLaVA's Vicuna does)

Tokenizer: special tokens ``<s>`` (bos, added in front of every text as Llama's tokenizer does),
``</s>`` (eos, never added by the tokenizer: templates add it), ``<unk>``, ``<pad>`` (distinct from eos,
so masking padding never masks an end of turn), plus ``<|im_start|>`` / ``<|im_end|>`` when a
(ChatML) chat template is given. Byte-level, so any text round-trips exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
MAX_POSITIONS = 2048  # model_max_length of the tokenizer = max_position_embeddings of the LLM
LLM_ARCHS = ("llama", "qwen2")


def train_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 512, chat_template: str | None = None):
    """Train a byte-level BPE of (at most) ``vocab_size`` tokens on ``texts`` and ``save_pretrained`` it
    into ``out_dir`` (atomically: a temporary folder, then renamed). Returns the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + (CHATML_TOKENS if chat_template else [])
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    extra = {"extra_special_tokens": CHATML_TOKENS} if chat_template else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS, padding_side="right",
                                        clean_up_tokenization_spaces=False, **SPECIAL_TOKENS, **extra)
    if chat_template:
        tokenizer.chat_template = chat_template
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    return tokenizer


def build_tiny_llm(arch: str, out_dir: str | Path, tokenizer_dir: str | Path, *, hidden_size: int = 128, layers: int = 2,
                   heads: int = 4, seed: int = 0) -> Path:
    """A ``arch`` ("llama" or "qwen2") causal LM with random weights (seeded), sized to the tokenizer in
    ``tokenizer_dir``, saved with that tokenizer into ``out_dir`` (safetensors; atomically). MLP width
    4 x hidden, RoPE, ``max_position_embeddings`` 2048, untied embeddings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    if arch not in LLM_ARCHS:
        raise ValueError(f"unknown tiny LLM architecture {arch!r}; choose one of {list(LLM_ARCHS)}")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    common = dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=MAX_POSITIONS,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  tie_word_embeddings=False)
    cfg = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir


def pretrain_lm(model_dir: str | Path, texts: list[str], *, steps: int, batch_size: int, lr: float, seed: int,
                log=sys.stderr) -> dict:
    """Train the causal LM in ``model_dir`` on ``texts`` for ``steps`` AdamW steps (batches of
    ``batch_size`` texts drawn with replacement, each ``<s> text </s>``, right-padded, padding not
    supervised; warmup 5% then cosine to 10% of ``lr``; gradients clipped at 1), then rewrite
    ``model_dir`` atomically. Deterministic for a seed (same threads). Returns ``{"steps",
    "first_loss", "last_loss"}``: the mean token loss of the first and of the last step's batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).float().train()
    ids = [(tok(t).input_ids + [tok.eos_token_id])[:MAX_POSITIONS] for t in texts if t]
    if not ids or steps < 1:
        raise ValueError(f"pretrain_lm: need texts and steps >= 1 (got {len(ids)} texts, {steps} steps)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        batch = [ids[i] for i in torch.randint(len(ids), (batch_size,), generator=gen).tolist()]
        width = max(len(b) for b in batch)
        input_ids = torch.full((batch_size, width), tok.pad_token_id)
        mask = torch.zeros(batch_size, width, dtype=torch.long)
        for r, b in enumerate(batch):
            input_ids[r, : len(b)] = torch.tensor(b)
            mask[r, : len(b)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            print(json.dumps({"step": step + 1, "loss": round(losses[-1], 4), "lr": lr_at(step),
                              "s": round(time.perf_counter() - t0, 1)}), file=log, flush=True)
    model.eval()
    with _atomic_dir(model_dir, keep=True) as tmp:
        model.save_pretrained(tmp)
    return {"steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}


class _atomic_dir:
    """``with _atomic_dir(final) as tmp:`` write a folder at ``tmp``; it replaces ``final`` only if the
    block succeeds (``keep``: ``tmp`` starts as a copy of ``final``, so files not rewritten stay)."""

    def __init__(self, final: Path, keep: bool = False):
        self.final, self.keep = Path(final), keep
        self.tmp = self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}")
        self.old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.keep and self.final.is_dir():
            shutil.copytree(self.final, self.tmp)
        else:
            self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():  # two renames: the final name never holds a half-written folder
            os.replace(self.final, self.old)
        os.replace(self.tmp, self.final)
        shutil.rmtree(self.old, ignore_errors=True)
