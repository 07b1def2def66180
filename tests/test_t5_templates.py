"""Encoder-decoder (CLIP-FlanT5) templates: encoder ids and decoder labels, on a tiny T5 tokenizer built here.

Expected lists are written as the layout they must have, each text piece tokenized on its own
without T5's appended ``</s>`` (``pieces``) and the ``</s>`` / image ids spelled out, e.g.
``[*pieces("..."), EOS, X, *pieces("..."), EOS]``: the ``</s>`` in front of the image is
CLIP-FlanT5's (every chunk cut at ``<image>`` is tokenized with T5's ``</s>``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

from sailflow.llava.templates import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    VICUNA_SYSTEM,
    Seq2SeqEncoded,
    T5PlainSplitTextTemplate,
    TemplateError,
    caption_split,
    flatten_single_turns,
    get_template,
    truncate,
)
from sailflow.llava.tiny_t5 import build_tiny_t5, train_t5_tokenizer

X = IMAGE_TOKEN_INDEX
PAD, EOS, UNK = 0, 1, 2  # T5's ids

CORPUS = [VICUNA_SYSTEM, "USER: What color is it? ASSISTANT: a red square on a blue ground",
          "Is it big? No, it is small.", "What color? red square", "Describe the image. a blue circle"] * 4


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    d = tmp_path_factory.mktemp("t5")
    tok = train_t5_tokenizer(CORPUS, d / "tokenizer", vocab_size=200)
    return {"dir": d, "tok": tok}


@pytest.fixture(scope="module")
def tok(t5):
    return t5["tok"]


def pieces(tok, text: str) -> list[int]:
    """``text`` tokenized alone, without the ``</s>`` T5 appends."""
    return tok(text, add_special_tokens=False).input_ids


def conv(*turns):
    return [{"from": f, "value": v} for f, v in turns]


RECORD = conv(("human", "What color?\n<image>"), ("gpt", "red square"))
CAPTION = conv(("human", "<image>\nDescribe the image."), ("gpt", "a red square on a blue ground"))
TEXT_3 = conv(("gpt", "Hi"), ("human", "Is it big?"), ("gpt", "No"), ("human", "What color?"), ("gpt", "red"))


# ---- the tokenizer --------------------------------------------------------------------------------
def test_tokenizer_is_t5_shaped(t5, tok):
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (PAD, EOS, UNK, None)
    assert tok("").input_ids == [EOS]  # T5 appends </s> to every text, even an empty one
    assert tok("red square").input_ids == pieces(tok, "red square") + [EOS]
    assert pieces(tok, "What color?\nred") == pieces(tok, "What color? red")  # no newline token: "\n" is a space
    assert tok.convert_ids_to_tokens(pieces(tok, "re"))[0].startswith("▁")  # first word gets "▁" (SentencePiece)
    assert UNK not in pieces(tok, " ".join(CORPUS) + " {zebra} #42")  # any ASCII character is known
    assert tok.decode(tok("a red square on a blue ground").input_ids, skip_special_tokens=True) == "a red square on a blue ground"
    again = AutoTokenizer.from_pretrained(str(t5["dir"] / "tokenizer"))
    assert type(again).__name__.startswith("T5Tokenizer") and again.model_max_length == 2048
    for text in CORPUS[:5]:
        assert again(text).input_ids == tok(text).input_ids


def test_tokenizer_is_the_same_in_every_run(t5, tok, tmp_path):
    """The Unigram trainer returns its pieces in a different order (other ids) from run to run; the tiny
    T5 of the workflow and the tests must not depend on the run."""
    runs = [train_t5_tokenizer(CORPUS, tmp_path / str(i), vocab_size=200) for i in range(3)]
    files = {(tmp_path / str(i) / "tokenizer.json").read_bytes() for i in range(3)}
    assert files == {(t5["dir"] / "tokenizer" / "tokenizer.json").read_bytes()}
    for t in runs:
        assert t("a red square {zebra} ~").input_ids == tok("a red square {zebra} ~").input_ids
    ids = pieces(tok, "~ red")  # an unseen character: itself, not <unk>, at the lowest score
    assert UNK not in ids and tok.convert_ids_to_tokens(ids)[:2] == ["▁", "~"]


# ---- encoder ids and decoder labels -----------------------------------------------------------------
def test_t5_plain(tok):
    enc = get_template("t5_plain", tok).encode(RECORD, has_image=True)
    assert enc == Seq2SeqEncoded(
        input_ids=[EOS, X, EOS],  # "<image>": an empty chunk (</s>), the image, an empty chunk (</s>); no question
        labels=[*pieces(tok, "red square"), EOS],  # the caption + </s>, all supervised
    )


def test_t5_v1_image(tok):
    enc = get_template("t5_v1", tok).encode(RECORD, has_image=True)
    # "{system} USER: <image>\nWhat color? ASSISTANT: " cut at <image>; each chunk + </s>
    assert enc.input_ids == [*pieces(tok, VICUNA_SYSTEM + " USER: "), EOS, X, *pieces(tok, "\nWhat color? ASSISTANT: "), EOS]
    assert enc.labels == [*pieces(tok, "red square"), EOS]  # the answer alone: no role, no separator
    first = enc.input_ids.index(EOS)
    assert tok.decode(enc.input_ids[:first]) == VICUNA_SYSTEM + " USER:"
    assert tok.decode(enc.input_ids[first + 2:]) == "What color? ASSISTANT:</s>"


def test_t5_v1_text_only_multi_turn(tok):
    """Not flattened: earlier rounds go to the encoder, only the last answer is supervised; the leading
    gpt turn is dropped; text-only is tokenized in one piece."""
    enc = get_template("t5_v1", tok).encode(TEXT_3, has_image=False)
    text = VICUNA_SYSTEM + " USER: Is it big? ASSISTANT: No USER: What color? ASSISTANT: "
    assert enc.input_ids == [*pieces(tok, text), EOS]
    assert enc.labels == [*pieces(tok, "red"), EOS]
    assert IGNORE_INDEX not in enc.labels


def test_t5_v1_text_only_truncates_as_the_tokenizer(t5):
    """The reference's text-only path: tokenizer(text, truncation=True, max_length=model_max_length),
    which keeps </s> last; the image path is not cut."""
    short = AutoTokenizer.from_pretrained(str(t5["dir"] / "tokenizer"), model_max_length=12)
    template = get_template("t5_v1", short)
    enc = template.encode(TEXT_3, has_image=False)
    text = VICUNA_SYSTEM + " USER: Is it big? ASSISTANT: No USER: What color? ASSISTANT: "
    assert enc.input_ids == short(text, truncation=True, max_length=12).input_ids
    assert enc.input_ids == [*pieces(short, text)[:11], EOS]
    assert len(template.encode(RECORD, has_image=True).input_ids) > 12


def test_t5_plain_split_text_fixed_seed(tok):
    caption = "a red square on a blue ground"  # 29 characters: split in [1, 14]
    split = caption_split(caption, seed=0, epoch=0, index=4)
    assert split == 14
    assert (caption[:split], caption[split:]) == ("a red square o", "n a blue ground")  # inside a word
    enc = get_template("t5_plain_split_text", tok, seed=0).encode(CAPTION, has_image=True, index=4, epoch=0)
    assert enc.input_ids == [EOS, X, *pieces(tok, "a red square o"), EOS]
    assert enc.labels == [*pieces(tok, "n a blue ground"), EOS]  # "n" starts a word for T5 ("▁n")
    assert tok.convert_ids_to_tokens(enc.labels)[0].startswith("▁")


def test_split_is_seeded_per_sample_and_epoch(tok):
    caption = "a red square on a blue ground"
    draws = {(seed, epoch, index): caption_split(caption, seed=seed, epoch=epoch, index=index)
             for seed in (0, 1) for epoch in (0, 1) for index in range(20)}
    assert all(1 <= s <= 14 for s in draws.values())
    assert len({draws[0, 0, i] for i in range(20)}) > 3  # differs across samples
    assert [draws[0, 0, i] for i in range(20)] != [draws[0, 1, i] for i in range(20)]  # and epochs
    assert [draws[0, 0, i] for i in range(20)] != [draws[1, 0, i] for i in range(20)]  # and seeds
    assert [draws[0, 1, i] for i in range(19)] != [draws[0, 0, i + 1] for i in range(19)]  # not seed + epoch + index
    assert caption_split(caption, seed=0, epoch=1, index=3) == draws[0, 1, 3]  # deterministic
    assert caption_split("a", seed=0, epoch=0, index=0) == 0  # shorter than 2: no split
    template = get_template("t5_plain_split_text", tok, seed=1)
    assert isinstance(template, T5PlainSplitTextTemplate) and template.seed == 1
    enc = template.encode(CAPTION, has_image=True, index=7, epoch=1)
    split = draws[1, 1, 7]
    assert enc == Seq2SeqEncoded([EOS, X, *pieces(tok, caption[:split]), EOS], [*pieces(tok, caption[split:]), EOS])
    one = template.encode(conv(("human", "<image>"), ("gpt", "a")), has_image=True, index=7, epoch=1)
    assert one == Seq2SeqEncoded([EOS, X, EOS], [*pieces(tok, "a"), EOS])


def test_prompts_and_stop_tokens(tok):
    plain, split, v1 = (get_template(n, tok) for n in ("t5_plain", "t5_plain_split_text", "t5_v1"))
    assert plain.prompt("What color?", has_image=True) == [EOS, X, EOS]
    assert split.prompt("What color?", has_image=True) == [EOS, X, EOS]
    assert v1.prompt("What color?", has_image=True) == [*pieces(tok, VICUNA_SYSTEM + " USER: "), EOS, X,
                                                        *pieces(tok, "\nWhat color? ASSISTANT: "), EOS]
    assert v1.prompt("What color?", has_image=False) == [*pieces(tok, VICUNA_SYSTEM + " USER: What color? ASSISTANT: "), EOS]
    assert v1.prompt("What color?", has_image=True) == v1.encode(RECORD, has_image=True).input_ids
    assert plain.stop_token_ids() == v1.stop_token_ids() == [EOS]


# ---- flattening ---------------------------------------------------------------------------------------
def test_flatten_three_turns():
    record = {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": conv(
        ("human", "<image>\nWhat color is the bus?"), ("gpt", "White and red."),
        ("human", "What is on its back?"), ("gpt", "An advertisement."),
        ("human", "Is it moving?"), ("gpt", "No."))}
    before = copy.deepcopy(record)
    flat = flatten_single_turns(record)
    assert record == before  # not modified
    assert flat == [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
         "conversations": conv(("human", "<image>\nWhat color is the bus?"), ("gpt", "White and red."))},
        {"id": "000000033471-turn1", "image": "coco/train2017/000000033471.jpg",
         "conversations": conv(("human", "<image>\nWhat is on its back?"), ("gpt", "An advertisement."))},
        {"id": "000000033471-turn2", "image": "coco/train2017/000000033471.jpg",
         "conversations": conv(("human", "<image>\nIs it moving?"), ("gpt", "No."))},
    ]
    assert flatten_single_turns(flat[1]) == [flat[1]]  # two messages: as it is
    text_only = flatten_single_turns({"id": "i6IyJda_0", "conversations": TEXT_3})  # leading gpt dropped
    assert text_only == [{"id": "i6IyJda_0", "conversations": conv(("human", "Is it big?"), ("gpt", "No"))},
                         {"id": "i6IyJda_0-turn1", "conversations": conv(("human", "What color?"), ("gpt", "red"))}]
    with pytest.raises(TemplateError) as e:
        flatten_single_turns({"id": "x", "conversations": conv(("human", "a"), ("gpt", "b"), ("human", "c"))})
    assert e.value.reason == "roles_out_of_order"


def test_flattened_turns_encode_with_their_image(tok):
    record = {"id": "r", "image": "a.jpg", "conversations": conv(
        ("human", "What color?\n<image>"), ("gpt", "red"), ("human", "Is it big?"), ("gpt", "No"),
        ("human", "Describe the image."), ("gpt", "a red square"))}
    v1 = get_template("t5_v1", tok)
    encs = [v1.encode(r["conversations"], has_image=True) for r in flatten_single_turns(record)]
    head = [*pieces(tok, VICUNA_SYSTEM + " USER: "), EOS, X]
    assert [e.input_ids for e in encs] == [head + [*pieces(tok, f"\n{q} ASSISTANT: "), EOS]
                                           for q in ("What color?", "Is it big?", "Describe the image.")]
    assert [e.labels for e in encs] == [[*pieces(tok, a), EOS] for a in ("red", "No", "a red square")]


# ---- truncation and refusals ----------------------------------------------------------------------------
def test_truncate_seq2seq():
    enc = Seq2SeqEncoded([EOS, X, 7, 8, EOS], [9, 10, 11, EOS])  # encoder: 8 positions with 4 image tokens
    assert truncate(enc, 4, 8) is enc
    assert truncate(enc, 4, 7) == Seq2SeqEncoded([EOS, X, 7, 8], [9, 10, 11, EOS])  # encoder cut; labels fit
    assert truncate(enc, 4, 3) is None  # the cut falls inside the image span
    assert truncate(Seq2SeqEncoded([EOS, 7, EOS], [9, 10, 11, EOS]), 4, 2) == Seq2SeqEncoded([EOS, 7], [9, 10])
    assert truncate(Seq2SeqEncoded([EOS], []), 4, 8) is None  # nothing to learn


def test_refusals(tok):
    plain, split, v1 = (get_template(n, tok) for n in ("t5_plain", "t5_plain_split_text", "t5_v1"))
    cases = [
        (plain, TEXT_3, False, "plain_text_only"),
        (split, conv(("human", "<image>\na"), ("gpt", "b"), ("human", "c"), ("gpt", "d")), True, "plain_multi_turn"),
        (plain, conv(("human", "a"), ("gpt", "b")), True, "no_image_placeholder"),
        (v1, conv(("human", "<image> a"), ("gpt", "b")), False, "image_in_text_only"),
        (v1, conv(("human", "a"), ("gpt", " ")), False, "empty_turn"),
    ]
    for template, conversations, has_image, reason in cases:
        with pytest.raises(TemplateError) as e:
            template.encode(conversations, has_image)
        assert e.value.reason == reason
    words = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    not_t5 = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>", unk_token="<unk>")  # appends no </s>
    with pytest.raises(ValueError, match="needs a T5 tokenizer"):
        get_template("t5_v1", not_t5)


# ---- the tiny T5 --------------------------------------------------------------------------------------
def test_tiny_t5_loads_and_trains_on_a_sample(t5, tok):
    out = build_tiny_t5(t5["dir"] / "model", t5["dir"] / "tokenizer", d_model=32, layers=1, heads=2, seed=0)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(out))
    cfg = model.config
    assert (cfg.model_type, cfg.is_encoder_decoder, cfg.vocab_size, cfg.d_model, cfg.num_layers) == ("t5", True, len(tok), 32, 1)
    assert (cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id) == (PAD, PAD, EOS)
    assert AutoTokenizer.from_pretrained(str(out))(CORPUS[1]).input_ids == tok(CORPUS[1]).input_ids
    v1 = get_template("t5_v1", tok)
    encs = [v1.encode(TEXT_3, has_image=False), v1.encode(conv(("human", "Is it big?"), ("gpt", "No, it is small.")), False)]
    width, depth = max(len(e.input_ids) for e in encs), max(len(e.labels) for e in encs)
    input_ids = torch.tensor([e.input_ids + [PAD] * (width - len(e.input_ids)) for e in encs])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * (depth - len(e.labels)) for e in encs])  # -100 only as padding
    out = model(input_ids=input_ids, attention_mask=input_ids.ne(PAD), labels=labels, decoder_attention_mask=labels.ne(IGNORE_INDEX))
    assert out.logits.shape == (2, depth, len(tok))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    assert model.shared.weight.grad is not None  # T5's shared encoder/decoder input embedding gets a gradient
