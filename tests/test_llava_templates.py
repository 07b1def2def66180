"""Conversation templates: input_ids and labels token for token, on tokenizers built here.

The literal lists use a word-level tokenizer whose vocabulary is spelled out below, so every
expected id can be checked by hand. Round trips ("decoding the supervised tokens gives back exactly
the answers plus their end tokens") use a byte-level BPE and a SentencePiece-style (Metaspace) BPE.
"""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sailflow.llava.templates import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    VICUNA_SYSTEM,
    Encoded,
    TemplateError,
    get_template,
    truncate,
)

I, X = IGNORE_INDEX, IMAGE_TOKEN_INDEX  # short names for the literal lists

SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<|im_start|>": 4, "<|im_end|>": 5}
WORDS = {
    "\n": 6, "A": 7, "chat": 8, "between": 9, "a": 10, "curious": 11, "user": 12, "and": 13, "an": 14,
    "artificial": 15, "intelligence": 16, "assistant": 17, ".": 18, "The": 19, "gives": 20, "helpful": 21,
    ",": 22, "detailed": 23, "polite": 24, "answers": 25, "to": 26, "the": 27, "'": 28, "s": 29,
    "questions": 30, "USER": 31, ":": 32, "ASSISTANT": 33, "What": 34, "color": 35, "?": 36, "red": 37,
    "square": 38, "Is": 39, "it": 40, "big": 41, "No": 42, "Yes": 43, "Describe": 44, "system": 45,
    "You": 46, "are": 47, "Hi": 48,
}
# "A chat between a curious user and an artificial intelligence assistant. The assistant gives
#  helpful, detailed, and polite answers to the user's questions."
SYS = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 17, 20, 21, 22, 23, 22, 13, 24, 25, 26, 27, 12, 28, 29, 30, 18]
# "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" (the ChatML default system turn)
CHATML_SYS = [4, 45, 6, 46, 47, 10, 21, 17, 18, 5, 6]

# Qwen2's ChatML, reduced: a default system prompt, "<|im_start|>{role}\n{content}<|im_end|>\n"
CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def fast(tok: Tokenizer, chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                pad_token="<pad>", extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat_template:
        t.chat_template = chat_template
    return t


@pytest.fixture(scope="module")
def words():
    """Word-level: spaces dropped, words / single punctuation / newline are tokens."""
    tok = Tokenizer(models.WordLevel({**SPECIALS, **WORDS}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\n"), "isolated")])
    return fast(tok)


CORPUS = [VICUNA_SYSTEM, "USER: What color is the bus? ASSISTANT: The bus is white and red.",
          "Is it big? No, it is small. Describe the café ☕ in one line.", "a red square on a blue ground"] * 3


@pytest.fixture(scope="module")
def bytes_bpe():
    """Byte-level BPE (GPT-2 / Qwen2 style), trained here on a few sentences."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIALS), show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return fast(tok)


@pytest.fixture(scope="module")
def sentencepiece_bpe():
    """Llama-style: Metaspace "▁" with prepend_scheme="first" (Vicuna v1.5, legacy=False) and no split."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    texts = CORPUS + [t["value"] for conversations, _ in CONVERSATIONS for t in conversations]
    chars = sorted(set("".join(texts)) | {"▁"})
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=260, special_tokens=list(SPECIALS), show_progress=False,
                                                        initial_alphabet=chars))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
    return fast(tok)


def conv(*turns):
    return [{"from": f, "value": v} for f, v in turns]


IMAGE_1 = conv(("human", "What color?\n<image>"), ("gpt", "red square"))
TEXT_3 = conv(("gpt", "Hi"), ("human", "Is it big?"), ("gpt", "No"), ("human", "What color?"), ("gpt", "red"))
IMAGE_2 = conv(("human", "<image>\nWhat color?"), ("gpt", "red"), ("human", "Is it big?"), ("gpt", "No"))


# ---- literal ids and labels ---------------------------------------------------------------------
def test_plain_keeps_only_image_and_caption(words):
    enc = get_template("plain", words).encode(IMAGE_1, has_image=True)
    assert enc.input_ids == [1, X, 37, 38, 6]  # <s> <image> red square \n   (the question is gone)
    assert enc.labels == [I, I, 37, 38, 6]  # caption + newline supervised, no EOS


def test_v1_image_single_turn(words):
    enc = get_template("v1", words).encode(IMAGE_1, has_image=True)
    # <s> SYS USER : <image> \n What color ? ASSISTANT : red square </s>   (<image> moved first)
    assert enc.input_ids == [1, *SYS, 31, 32, X, 6, 34, 35, 36, 33, 32, 37, 38, 2]
    assert enc.labels == [I] * (1 + 29 + 2 + 1 + 6) + [37, 38, 2]


def test_v1_text_only_multi_turn_drops_leading_gpt(words):
    enc = get_template("v1", words).encode(TEXT_3, has_image=False)
    # <s> SYS USER : Is it big ? ASSISTANT : No </s> USER : What color ? ASSISTANT : red </s>
    assert enc.input_ids == [1, *SYS, 31, 32, 39, 40, 41, 36, 33, 32, 42, 2, 31, 32, 34, 35, 36, 33, 32, 37, 2]
    assert enc.labels == [I] * (1 + 29 + 8) + [42, 2] + [I] * 7 + [37, 2]


def test_v1_image_multi_turn(words):
    enc = get_template("v1", words).encode(IMAGE_2, has_image=True)
    assert enc.input_ids == [1, *SYS, 31, 32, X, 6, 34, 35, 36, 33, 32, 37, 2, 31, 32, 39, 40, 41, 36, 33, 32, 42, 2]
    assert enc.labels == [I] * (1 + 29 + 2 + 1 + 6) + [37, 2] + [I] * 8 + [42, 2]


def test_v1_with_the_runs_own_system_prompt(words):
    none = get_template("v1", words, system="")  # no system prompt: the text starts at "USER:"
    enc = none.encode(IMAGE_2, has_image=True)
    assert enc.input_ids == [1, 31, 32, X, 6, 34, 35, 36, 33, 32, 37, 2, 31, 32, 39, 40, 41, 36, 33, 32, 42, 2]
    assert enc.labels == [I] * (1 + 2 + 1 + 6) + [37, 2] + [I] * 8 + [42, 2]
    assert none.prompt("What color?", has_image=True) == [1, 31, 32, X, 6, 34, 35, 36, 33, 32]
    own = get_template("v1", words, system="You are a helpful assistant.")
    assert own.prompt("What color?", has_image=False) == [1, 46, 47, 10, 21, 17, 18, 31, 32, 34, 35, 36, 33, 32]
    assert get_template("v1", words).system == VICUNA_SYSTEM  # the default is untouched
    with pytest.raises(ValueError, match="template 'plain' has no system prompt to set"):
        get_template("plain", words, system="")
    with pytest.raises(ValueError, match="template 'chat' has no system prompt to set"):
        get_template("chat", words, system="Hi")


def test_generation_and_vqascore_prompts_follow_the_stages_system_prompt(words):
    from sailflow.llava.generate import VisionLanguageModel

    none = VisionLanguageModel(None, words, {"template": "v1", "settings": {"system_prompt": ""}})
    assert none.prompt_ids("What color?") == [1, 31, 32, X, 6, 34, 35, 36, 33, 32]
    # VQAScore teacher-forces its question through the same template's encode
    assert none.template.encode(IMAGE_1, has_image=True).input_ids == [1, 31, 32, X, 6, 34, 35, 36, 33, 32, 37, 38, 2]
    default = VisionLanguageModel(None, words, {"template": "v1", "settings": {}})
    assert default.prompt_ids("What color?") == [1, *SYS, 31, 32, X, 6, 34, 35, 36, 33, 32]


def test_chat_image_multi_turn(words):
    enc = get_template("chat", words).encode(IMAGE_2, has_image=True)
    # SYS-turn <|im_start|> user \n <image> \n What color ? <|im_end|> \n <|im_start|> assistant \n red <|im_end|> \n ...
    assert enc.input_ids == [*CHATML_SYS, 4, 12, 6, X, 6, 34, 35, 36, 5, 6, 4, 17, 6, 37, 5, 6,
                             4, 12, 6, 39, 40, 41, 36, 5, 6, 4, 17, 6, 42, 5, 6]
    assert enc.labels == [I] * (11 + 13) + [37, 5, I] + [I] * 12 + [42, 5, I]  # not the newline after <|im_end|>


def test_chat_text_only_drops_leading_gpt(words):
    enc = get_template("chat", words).encode(TEXT_3, has_image=False)
    assert enc.input_ids == [*CHATML_SYS, 4, 12, 6, 39, 40, 41, 36, 5, 6, 4, 17, 6, 42, 5, 6,
                             4, 12, 6, 34, 35, 36, 5, 6, 4, 17, 6, 37, 5, 6]
    assert enc.labels == [I] * (11 + 12) + [42, 5, I] + [I] * 11 + [37, 5, I]


def test_prompts_and_stop_tokens(words):
    plain, v1, chat = (get_template(n, words) for n in ("plain", "v1", "chat"))
    assert plain.prompt("What color?", has_image=True) == [1, X]
    assert v1.prompt("What color?", has_image=True) == [1, *SYS, 31, 32, X, 6, 34, 35, 36, 33, 32]
    assert v1.prompt("What color?", has_image=False) == [1, *SYS, 31, 32, 34, 35, 36, 33, 32]
    assert chat.prompt("What color?", has_image=True) == [*CHATML_SYS, 4, 12, 6, X, 6, 34, 35, 36, 5, 6, 4, 17, 6]
    assert plain.stop_token_ids() == [2, 6]  # eos, and the newline that ends every caption
    assert v1.stop_token_ids() == [2]
    assert chat.stop_token_ids() == [5, 2]  # <|im_end|>, eos


def test_truncate_counts_image_tokens():
    enc = Encoded([1, X, 37, 38, 6], [I, I, 37, 38, 6])  # spliced with 4 image tokens: 8 positions
    assert truncate(enc, 4, 8) is enc
    assert truncate(enc, 4, 7) == Encoded([1, X, 37, 38], [I, I, 37, 38])
    assert truncate(enc, 4, 6) == Encoded([1, X, 37], [I, I, 37])
    assert truncate(enc, 4, 5) is None  # [1, X] would remain: nothing supervised
    assert truncate(enc, 4, 3) is None  # the cut falls inside the image span
    assert truncate(enc, 4, 1) is None  # only <s>: nothing supervised
    assert truncate(Encoded([1, 5, 6], [I, I, I]), 4, 10) is None  # fits, but nothing to learn


def test_truncate_multi_turn_keeps_first_answer(words):
    enc = get_template("v1", words).encode(IMAGE_2, has_image=True)
    assert len(enc.input_ids) == 51  # 60 positions with 10 image tokens
    assert truncate(enc, 10, 60) is enc
    cut = truncate(enc, 10, 58)  # 49 ids kept: the second answer "No </s>" is cut away
    assert cut.input_ids == [1, *SYS, 31, 32, X, 6, 34, 35, 36, 33, 32, 37, 2, 31, 32, 39, 40, 41, 36, 33, 32]
    assert cut.labels == [I] * (1 + 29 + 2 + 1 + 6) + [37, 2] + [I] * 8
    assert truncate(enc, 10, 49).labels == [I] * 39 + [37]  # half of the first answer is left
    assert truncate(enc, 10, 48) is None  # up to "ASSISTANT :" of round 1: nothing supervised


# ---- round trips ----------------------------------------------------------------------------------
def supervised_spans(enc: Encoded) -> list[list[int]]:
    spans, cur = [], []
    for i, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE_INDEX:
            assert label == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


CONVERSATIONS = [
    (IMAGE_1, True),
    (IMAGE_2, True),
    (TEXT_3, False),
    (conv(("human", "Describe the café ☕ in one line.\n<image>"), ("gpt", "A café, with a cup ☕ on the table.")), True),
    (conv(("human", "Why?"), ("gpt", "Because  two spaces\nand a newline."), ("human", "Yes?"), ("gpt", " leading space")), False),
]


def answers(conversations):
    turns = conversations[1:] if conversations[0]["from"] == "gpt" else conversations
    return [t["value"] for t in turns if t["from"] == "gpt"]


@pytest.mark.parametrize("name", ["v1", "chat", "plain"])
def test_supervised_tokens_decode_to_answers_bytes(bytes_bpe, name):
    template = get_template(name, bytes_bpe)
    end = {"v1": "</s>", "chat": "<|im_end|>", "plain": "\n"}[name]
    lead = " " if name == "v1" else ""  # v1: the space before an answer belongs to it
    for conversations, has_image in CONVERSATIONS:
        if name == "plain" and (len(conversations) != 2 or not has_image):
            continue
        enc = template.encode(conversations, has_image)
        got = [bytes_bpe.decode(span, skip_special_tokens=False) for span in supervised_spans(enc)]
        assert got == [lead + a + end for a in answers(conversations)]
        assert enc.input_ids.count(X) == int(has_image)
    assert template.mismatches == 0


def test_v1_on_sentencepiece_style_tokenizer(sentencepiece_bpe):
    """No mismatch on a Llama-style tokenizer: "USER" after </s> gets no "▁" in the joint text, nor here."""
    template = get_template("v1", sentencepiece_bpe)
    for conversations, has_image in CONVERSATIONS:
        enc = template.encode(conversations, has_image)
        got = [sentencepiece_bpe.decode(span, skip_special_tokens=False) for span in supervised_spans(enc)]
        # the supervised span is " " + answer + "</s>"; the Metaspace decoder drops a span's first "▁"
        assert got == [a + "</s>" for a in answers(conversations)]
    assert template.mismatches == 0
    enc = template.encode(TEXT_3, has_image=False)
    second_user = enc.input_ids.index(2) + 1
    assert sentencepiece_bpe.convert_ids_to_tokens(enc.input_ids[second_user])[0] == "U"  # not "▁U..."


def test_mismatch_is_counted_and_labels_stay_right():
    """A tokenizer with a merge across the answer boundary (":" + "▁"): the joint text tokenizes
    differently; the segment-wise ids are kept and the mismatch is counted."""
    text = VICUNA_SYSTEM + " USER: Is it big? ASSISTANT: No</s>"
    chars = sorted(set(text.replace(" ", "▁")) - set("</>"))
    vocab = {**SPECIALS, **{c: len(SPECIALS) + k for k, c in enumerate(chars)}}
    vocab[":▁"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(":", "▁")], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
    tokenizer = fast(tok, chat_template=None)
    template = get_template("v1", tokenizer)
    enc = template.encode(conv(("human", "Is it big?"), ("gpt", "No")), has_image=False)
    assert template.mismatches == 1
    assert [tokenizer.convert_ids_to_tokens(s) for s in supervised_spans(enc)] == [["▁", "N", "o", "</s>"]]


# ---- refusals -------------------------------------------------------------------------------------
def test_bad_conversations_are_template_errors(words):
    v1, plain = get_template("v1", words), get_template("plain", words)
    cases = [
        (v1, conv(("human", "a"), ("human", "b")), False, "roles_out_of_order"),
        (v1, conv(("human", "a"), ("gpt", "b"), ("human", "c")), False, "roles_out_of_order"),
        (v1, conv(("human", "a"), ("gpt", " ")), False, "empty_turn"),
        (v1, conv(("human", "<image> a"), ("gpt", "b")), False, "image_in_text_only"),
        (v1, conv(("human", "a"), ("gpt", "b")), True, "no_image_placeholder"),
        (v1, conv(("human", "<image> <image>"), ("gpt", "b")), True, "two_images"),
        (plain, IMAGE_2, True, "plain_multi_turn"),
        (plain, conv(("human", "a"), ("gpt", "b")), False, "plain_text_only"),
    ]
    for template, conversations, has_image, reason in cases:
        with pytest.raises(TemplateError) as e:
            template.encode(conversations, has_image)
        assert e.value.reason == reason


def test_get_template_refusals(words):
    with pytest.raises(ValueError, match="unknown template 'vicuna'"):
        get_template("vicuna", words)
    no_chat = PreTrainedTokenizerFast(tokenizer_object=words.backend_tokenizer, bos_token="<s>", eos_token="</s>")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat_template"):
        get_template("chat", no_chat)
    no_end = fast(words.backend_tokenizer, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="no end-of-turn token"):
        get_template("chat", no_end)
