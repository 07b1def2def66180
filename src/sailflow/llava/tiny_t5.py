"""A tiny Flan-T5 for the tests, built here from nothing (nothing is downloaded):

    train_t5_tokenizer  a SentencePiece-style Unigram (``tokenizers``) on a few texts -> T5TokenizerFast
    build_tiny_t5       a T5ForConditionalGeneration with random weights from a T5Config, saved as a hub
                        model is (loads with ``AutoModelForSeq2SeqLM.from_pretrained``)

The tokenizer has T5's pipeline, so the T5 templates see what they see with ``google/flan-t5-*``:
``<pad>`` = 0 (also the decoder start token), ``</s>`` = 1 (appended to every text by the
post-processor), ``<unk>`` = 2, no bos; words split at whitespace ("\\n" is a space: T5 has no
newline) and each prefixed with "▁" (Metaspace, prepend "always", so a text's first word gets "▁" too).
Unlike Flan-T5 it has no normalizer (the SentencePiece charsmap) and no ``<extra_id_*>`` sentinels
(used only by T5's span-corruption pre-training).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from sailflow.llava.tiny import MAX_POSITIONS, _atomic_dir

T5_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}  # ids 0, 1, 2 as in T5


def train_t5_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 256):
    """Train a Unigram of (at most) ``vocab_size`` pieces on ``texts`` (plus printable ASCII, so no
    ASCII character is ``<unk>``), wrap it as a ``T5TokenizerFast`` (``model_max_length`` 2048, padding
    and truncation on the right, as CLIP-FlanT5 loads it) and ``save_pretrained`` it into ``out_dir``
    (atomically: a temporary folder, then renamed). Returns the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    specials = list(T5_SPECIAL_TOKENS.values())
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    alphabet = sorted(set(string.printable) - set(string.whitespace))
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=T5_SPECIAL_TOKENS["unk_token"],
                                      initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Two sources of run-to-run difference in the trainer's output (measured: 4 piece orders, i.e. 4 id
    # assignments, in 4 runs): its parallel EM sums in whatever order its threads finish (scores differ in
    # the last bits), and the characters it must keep but did not choose get made-up scores (the lowest
    # score, then 1e-4 more for each further one) in hash-set order. Canonical form: scores rounded to 1e-9,
    # the made-up scores handed to those characters in sorted order, specials first, then by score and
    # piece. The tokenizer, and the tiny T5 built on it, are then the same in every run.
    scores = {p: round(s, 9) for p, s in json.loads(tok.to_str())["model"]["vocab"] if p not in specials}
    lowest = min(s for p, s in scores.items() if len(p) == 1)
    steps = {p: (s - lowest) / 1e-4 for p, s in scores.items() if len(p) == 1}
    made_up = sorted(p for p, k in steps.items() if abs(k - round(k)) < 1e-3 and k < len(steps))
    scores |= dict(zip(made_up, sorted(scores[p] for p in made_up)))
    vocab = [(p, 0.0) for p in specials] + sorted(scores.items(), key=lambda x: (-x[1], x[0]))
    tok.model = models.Unigram(vocab, unk_id=specials.index(T5_SPECIAL_TOKENS["unk_token"]), byte_fallback=False)
    eos = T5_SPECIAL_TOKENS["eos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                       special_tokens=[(eos, tok.token_to_id(eos))])
    unigram = json.loads(tok.to_str())["model"]
    if [tok.token_to_id(t) for t in specials] != [0, 1, 2] or unigram["unk_id"] != 2:
        raise RuntimeError(f"the trained Unigram does not have T5's special ids: {[tok.token_to_id(t) for t in specials]}")
    # ``vocab`` (pieces and scores) is what transformers 5's T5Tokenizer rebuilds its model from;
    # ``tokenizer_object`` is what transformers 4's T5TokenizerFast uses (each ignores the other)
    tokenizer = T5TokenizerFast(tokenizer_object=tok, vocab=[tuple(v) for v in unigram["vocab"]], extra_ids=0,
                                model_max_length=MAX_POSITIONS, padding_side="right", truncation_side="right",
                                **T5_SPECIAL_TOKENS)
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    return tokenizer


def build_tiny_t5(out_dir: str | Path, tokenizer_dir: str | Path, *, d_model: int = 64, layers: int = 2, heads: int = 4,
                  seed: int = 0) -> Path:
    """A Flan-T5-shaped ``T5ForConditionalGeneration`` with random weights (seeded), sized to the
    tokenizer in ``tokenizer_dir``, saved with that tokenizer into ``out_dir`` (safetensors;
    atomically). ``layers`` each in the encoder and the decoder; as Flan-T5 (T5 v1.1): gated-GELU
    feed-forward of width 2.5 x ``d_model``, ``d_kv = d_model / heads``, no decoder-output scaling
    (``tie_word_embeddings=False``), decoder start token = pad (0). transformers 5's T5 ties ``lm_head`` to
    the shared embedding whatever the config says, so input and output embeddings are one tensor here."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    if d_model % heads:
        raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=d_model // heads, d_ff=5 * d_model // 2, num_layers=layers,
                   num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir
