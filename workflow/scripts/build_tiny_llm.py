"""Build a tiny LLM with a tokenizer trained here on the demo's texts (and, for demo_llama, briefly
pre-train it as a language model on them, so LLaVA stage 1 aligns to a frozen LM that knows the words).
``t5``: a Flan-T5-shaped encoder-decoder with a T5-style unigram tokenizer (CLIP-FlanT5's LLM)."""

import tempfile
from pathlib import Path

import torch

from sailflow.demo.instructions import demo_texts, tokenizer_texts
from sailflow.llava.tiny import build_tiny_llm, pretrain_lm, train_tokenizer
from sailflow.llava.tiny_t5 import build_tiny_t5, train_t5_tokenizer
from sailflow.logs import log_to

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def main(smk):
    log = log_to(smk.log[0])
    torch.set_num_threads(int(smk.threads))
    kind = smk.params.kind
    texts = demo_texts(smk.input.texts[0], smk.input.texts[1])
    arch = "qwen2" if kind == "qwen2" else "llama"
    with tempfile.TemporaryDirectory(prefix="tokenizer-") as tmp:
        if kind == "t5":
            train_t5_tokenizer(texts, Path(tmp) / "tok", vocab_size=512)
            build_tiny_t5(smk.output[0], Path(tmp) / "tok", d_model=128, layers=2, heads=4, seed=0)
            return
        corpus = tokenizer_texts(texts, smk.input.texts[1]) if kind == "demo_llama" else texts  # the prompt as often as stage 2 reads it
        train_tokenizer(corpus, Path(tmp) / "tok", vocab_size=512, chat_template=CHATML if arch == "qwen2" else None)
        build_tiny_llm(arch, smk.output[0], Path(tmp) / "tok", hidden_size=128, layers=2, heads=4, seed=0)
    if kind == "demo_llama":
        r = pretrain_lm(smk.output[0], texts, steps=int(smk.params.steps), batch_size=32, lr=3e-3, seed=0, log=log)
        print(f"pre-trained: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} in {r['steps']} steps", file=log)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
