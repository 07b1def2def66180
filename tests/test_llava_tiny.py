"""The demo's tiny LLM: a tokenizer trained on the demo's text, a Llama / Qwen2 from a config, a brief LM pre-training."""

from __future__ import annotations

import os
import random

import pytest
import torch
from safetensors.torch import load_file

from sailflow.demo.shapes import COLOURS, POSITIONS, SHAPES, SIZES, captions_for
from sailflow.llava.tiny import build_tiny_llm, pretrain_lm, train_tokenizer

QUESTIONS = ["What colour is the shape?", "What shape is in the image?", "Where is the shape?", "Is the shape large or small?",
             "What colour is the background?"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def demo_texts(n: int = 150, seed: int = 0) -> list[str]:
    rng, texts = random.Random(seed), []
    for _ in range(n):
        bg = rng.choice(list(COLOURS))
        a = {"shape": rng.choice(SHAPES), "colour": rng.choice([c for c in COLOURS if c != bg]), "background": bg,
             "size": rng.choice(list(SIZES)), "position": rng.choice(list(POSITIONS))}
        texts += list(captions_for(a, rng).values()) + [rng.choice(QUESTIONS), a["colour"], a["shape"], a["position"]]
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("llm")
    texts = demo_texts()
    tok = train_tokenizer(texts, d / "tokenizer", vocab_size=512)
    return {"dir": d, "texts": texts, "tok": tok, "llama": build_tiny_llm("llama", d / "llama", d / "tokenizer", seed=0)}


def test_tokenizer_round_trips_the_demo_text_with_distinct_special_tokens(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(built["dir"] / "tokenizer"))
    assert len({tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id}) == 4
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert 300 < len(tok) <= 512
    texts = built["texts"] + ["A never-seen Übung: 3 zebras? ✓"]  # byte-level: any text, no <unk>
    for t in texts:
        ids = tok(t).input_ids
        assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == t
    assert any("\n" in t for t in built["texts"])  # the long captions span lines
    caption = "a small red circle on a blue background"
    assert tok(caption).input_ids == built["tok"](caption).input_ids
    assert len(tok(caption).input_ids) <= 10  # BPE learned the demo's words (40 characters)
    assert tok.model_max_length == 2048 and tok.padding_side == "right"


def test_chatml_tokens_are_single_special_tokens(tmp_path):
    tok = train_tokenizer(demo_texts(30), tmp_path / "tok", vocab_size=400, chat_template=CHATML)
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    text = tok.apply_chat_template([{"role": "user", "content": "What colour is the shape?"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nWhat colour is the shape?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids.count(start) == 2 and ids.count(end) == 1
    assert tok.decode(ids) == text


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_llm_saves_and_loads_back_identically(built, arch, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = build_tiny_llm(arch, tmp_path / arch, built["dir"] / "tokenizer", hidden_size=64, layers=2, heads=4, seed=3)
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert not list(tmp_path.glob(".*"))  # no temporary folder left
    cfg = AutoConfig.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert cfg.model_type == arch and cfg.vocab_size == len(tok) and cfg.hidden_size == 64
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    torch.manual_seed(3)
    fresh = AutoModelForCausalLM.from_config(cfg).eval()  # the same random init, never saved
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    batch = tok(["a small red circle on a blue background", "What colour is the shape?"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = fresh(**batch).logits, loaded(**batch).logits
    assert a.shape == (2, batch.input_ids.shape[1], len(tok))
    assert torch.equal(a, b)


@pytest.fixture
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy machine spinning threads cost 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pretrain_lm_lowers_the_loss_deterministically(built, tmp_path, one_thread):
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_llm("llama", tmp_path / "base", built["dir"] / "tokenizer", hidden_size=64, layers=1, heads=4)
    runs = []
    for name in ("a", "b"):
        d = shutil.copytree(base, tmp_path / name)
        runs.append((d, pretrain_lm(d, built["texts"], steps=30, batch_size=8, lr=1e-2, seed=0, log=open(os.devnull, "w"))))
    (d_a, r_a), (d_b, r_b) = runs
    assert r_a == r_b and r_a["steps"] == 30
    assert r_a["last_loss"] < 0.5 * r_a["first_loss"]
    w_a, w_b = load_file(str(d_a / "model.safetensors")), load_file(str(d_b / "model.safetensors"))
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    assert not list(tmp_path.glob(".*"))  # rewritten atomically, nothing left beside it

    tok = AutoTokenizer.from_pretrained(str(d_a))
    batch = tok(["a small red circle on a blue background", "What colour is the shape?"], padding=True, return_tensors="pt")
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    with torch.no_grad():
        before = AutoModelForCausalLM.from_pretrained(str(base))(**batch, labels=labels).loss
        after = AutoModelForCausalLM.from_pretrained(str(d_a))(**batch, labels=labels).loss
    assert after < 0.5 * before
