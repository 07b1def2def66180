"""Conversation templates: LLaVA JSON conversations -> ``input_ids`` + ``labels`` (label masking).

Six templates, each a :class:`Template` bound to one tokenizer (no module-level state); three for a
decoder-only LLM, which give an :class:`Encoded` (``input_ids`` and ``labels`` aligned):

    plain  stage 1 (projector alignment): [bos] <image> caption "\\n"; the human text is discarded;
           the caption and its "\\n" are supervised, no EOS (LLaVA's ``preprocess_plain``)
    v1     stage 2, LLaVA-1.5's ``vicuna_v1``: "{system} USER: {q} ASSISTANT: {a}</s>USER: ..." ;
           each answer (with the space before it) and its EOS are supervised; a run may set its own
           system prompt (``system_prompt``, also for ``t5_v1``; empty: none)
    chat   the tokenizer's own ``chat_template`` (e.g. Qwen2's ChatML); each assistant content and
           the template's end-of-turn token after it are supervised

and three for an encoder-decoder LLM (CLIP-FlanT5, a Flan-T5), which give a :class:`Seq2SeqEncoded`:
encoder ids (with the image) and decoder labels (one answer + ``</s>``), two separate sequences:

    t5_plain             stage 1, no split: encoder "<image>", decoder the caption
    t5_plain_split_text  stage 1 (CLIP-FlanT5's default): encoder "<image>" + a random character prefix
                         of the caption, decoder the rest of it; re-drawn per sample and epoch, seeded
    t5_v1                stage 2: encoder "{system} USER: {q} ASSISTANT: ", decoder the last answer;
                         the data is flattened to single turns first (:func:`flatten_single_turns`)

Every decoder-only template builds the text as a list of segments (text or token ids, supervised or not), tokenizes
each segment once and concatenates the ids, so a label boundary is right by construction; LLaVA's
reference code tokenizes rounds again and trusts lengths to add up, which silently zeroes samples when
they do not (pitfall 1). As a check, the joint text is also tokenized in one go; a difference is
counted in ``Template.mismatches`` (the caller warns), the concatenation is still used.

``<image>`` (:data:`IMAGE_PLACEHOLDER`) is a marker in the record text, never a vocabulary token: it
becomes one :data:`IMAGE_TOKEN_INDEX` in ``input_ids``, which the model replaces with the vision
tower's N embeddings. :func:`truncate` cuts an encoded sample to the LLM's context, counting those N.

The T5 templates tokenize as CLIP-FlanT5 does (``t5_tokenizer_image_token``): the text is cut at
``<image>`` and each chunk is tokenized alone, and T5 appends ``</s>`` to every text, so each chunk
ends in ``</s>``, including the one before the image (see :meth:`T5Template._t5_ids`).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = {"human": "user", "gpt": "assistant"}


@dataclass
class Encoded:
    """One tokenized conversation, before the image is spliced in."""

    input_ids: list[int]  # one IMAGE_TOKEN_INDEX per image placeholder
    labels: list[int]  # same length; IGNORE_INDEX where not supervised


@dataclass
class Seq2SeqEncoded:
    """One tokenized sample for an encoder-decoder LLM (T5), before the image is spliced in. The two
    lists are separate sequences (T5's ``input_ids`` and ``labels``), of different lengths."""

    input_ids: list[int]  # encoder ids; one IMAGE_TOKEN_INDEX per image placeholder; nothing supervised
    labels: list[int]  # decoder targets: the answer's ids + eos, all supervised (padding adds IGNORE_INDEX)


class TemplateError(ValueError):
    """A conversation this template cannot encode; ``reason`` is the drop-count key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def conversation_turns(conversations: list[dict]) -> list[dict]:
    """The turns a template encodes: a leading gpt turn is dropped (as LLaVA's ``preprocess_v1`` does);
    the rest must alternate human/gpt, start with human, end with gpt, and have non-empty string values."""
    turns = list(conversations)
    if turns and isinstance(turns[0], dict) and turns[0].get("from") == "gpt":
        turns = turns[1:]
    if not turns or len(turns) % 2:
        raise TemplateError("roles_out_of_order", f"expected alternating human/gpt turns ending with gpt, got {_roles(conversations)}")
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") != ("human", "gpt")[j % 2]:
            raise TemplateError("roles_out_of_order", f"expected alternating human/gpt turns ending with gpt, got {_roles(conversations)}")
        if not isinstance(turn.get("value"), str):
            raise TemplateError("bad_format", f"turn {j} has a non-string value: {turn.get('value')!r}")
        if not turn["value"].strip():
            raise TemplateError("empty_turn", f"turn {j} ({turn['from']}) is empty")
    return turns


def _roles(conversations) -> list:
    return [t.get("from") if isinstance(t, dict) else type(t).__name__ for t in conversations]


def move_image_first(turns: list[dict], has_image: bool) -> list[dict]:
    """LLaVA's ``preprocess_multimodal``: with an image, the one ``<image>`` (in a human turn) is taken
    out and the first human message becomes ``"<image>\\n" + message``. Returns new turn dicts."""
    n = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
    if not has_image:
        if n:
            raise TemplateError("image_in_text_only", f"{IMAGE_PLACEHOLDER} in a record without an image")
        return [dict(t) for t in turns]
    if n != 1:
        raise TemplateError("no_image_placeholder" if n == 0 else "two_images",
                            f"an image record needs exactly one {IMAGE_PLACEHOLDER}, found {n}")
    if any(IMAGE_PLACEHOLDER in t["value"] for t in turns if t["from"] == "gpt"):
        raise TemplateError("image_in_gpt_turn", f"{IMAGE_PLACEHOLDER} in a gpt turn")
    out = []
    for t in turns:
        value = t["value"]
        if IMAGE_PLACEHOLDER in value:
            value = value.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append({**t, "value": value})
    out[0]["value"] = (IMAGE_PLACEHOLDER + "\n" + out[0]["value"]).strip()
    return out


def flatten_single_turns(record: dict) -> list[dict]:
    """CLIP-FlanT5's ``convert_multi_turn_to_single_turn``: a LLaVA JSON record -> one record per
    (human, gpt) pair, since an encoder-decoder sample supervises one answer.

    A record of two messages is returned as it is. Otherwise pair k becomes a copy of the record
    (``image`` and other keys kept) with that pair as its ``conversations``; with an image, each pair
    after the first gets ``"<image>\\n"`` in front of its question, so every turn sees the image. Pair
    0 keeps the record's ``id``, pair k >= 1 gets ``"{id}-turn{k}"``.

    On purpose, unlike the reference script: it gives every pair the same ``id`` (ids must be unique
    here); it prepends ``"<image>\\n"`` to text-only records too, where it stays literal text (our
    templates refuse ``<image>`` in a text-only record); it pairs a leading gpt turn with the next
    human turn, which its trainer then cannot encode (here it is dropped first, as every template
    does). A record that does not then alternate human/gpt is a :class:`TemplateError`."""
    conversations = record["conversations"]
    if len(conversations) == 2:
        return [record]
    turns = conversation_turns(conversations)
    has_image = "image" in record
    out = []
    for k in range(len(turns) // 2):
        question, answer = dict(turns[2 * k]), dict(turns[2 * k + 1])
        if k and has_image and IMAGE_PLACEHOLDER not in question["value"]:
            question["value"] = IMAGE_PLACEHOLDER + "\n" + question["value"]
        pair = copy.deepcopy({key: value for key, value in record.items() if key != "conversations"})
        pair["conversations"] = [question, answer]
        if k and "id" in record:
            pair["id"] = f"{record['id']}-turn{k}"
        out.append(pair)
    return out


class Template:
    """A conversation template bound to a tokenizer (a transformers fast tokenizer).

    ``encode`` builds a list of segments ``(text or [ids], supervised)``; text segments are cut at
    ``<image>`` and each piece is tokenized once without special tokens. A piece that continues the
    text (not at the start, not right after an image) is tokenized behind an anchor special token
    that is then removed: SentencePiece-style tokenizers (Llama/Vicuna, Metaspace) prefix "▁" to a
    text's first word, which a word in the middle of the joint text does not get.
    """

    name = ""
    encoder_decoder = False  # gives Seq2SeqEncoded (an encoder-decoder LLM's template), else Encoded
    flattens_turns = False  # supervises one answer per sample: multi-turn records are flattened first
    draws_per_epoch = False  # encode(..., index, epoch) draws at random: the dataset re-encodes each epoch
    reads_question = True  # False for stage 1's templates, which discard the human turn (captioning)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.mismatches = 0  # conversations whose joint tokenization differs from the segments'
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self._backend = self._pick_encoder()
        self._anchor = self._find_anchor()

    # ---- the three operations ------------------------------------------------------------------
    def encode(self, conversations: list[dict], has_image: bool) -> Encoded:
        """``conversations``: ``[{"from": "human"|"gpt", "value": str}, ...]`` as in LLaVA JSON."""
        segments = self.segments(conversations, has_image)
        enc = self._tokenize_segments(segments)
        if self._joint_ids(segments) != enc.input_ids:
            self.mismatches += 1
        return enc

    def prompt(self, question: str, has_image: bool) -> list[int]:
        """Generation prompt ids: one user turn ending where the assistant's answer starts."""
        text = (IMAGE_PLACEHOLDER + "\n" + question) if has_image else question
        return self._tokenize_segments(self.prompt_segments(text)).input_ids

    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer."""
        return [self.tokenizer.eos_token_id]

    # ---- per template ------------------------------------------------------------------------
    def segments(self, conversations: list[dict], has_image: bool) -> list[tuple[str | list[int], bool]]:
        raise NotImplementedError

    def prompt_segments(self, user_text: str) -> list[tuple[str | list[int], bool]]:
        raise NotImplementedError

    # ---- tokenization ------------------------------------------------------------------------
    def _pick_encoder(self):
        """The Rust tokenizer, used directly by :meth:`_encode` (10x faster than the transformers
        wrapper, which matters when 665K conversations are encoded up front), unless the two disagree
        on a probe; then None (the wrapper)."""
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            return None
        probe = f"{tok.eos_token or ''}USER: Hi  there,\n{tok.bos_token or ''} café ☕ ASSISTANT: 12 345</s>"
        same = backend.encode(probe, add_special_tokens=False).ids == tok.encode(probe, add_special_tokens=False)
        return backend if same else None

    def _encode(self, text: str) -> list[int]:
        """``text`` -> ids, no special tokens added."""
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _find_anchor(self) -> tuple[str, int] | None:
        """A special token that tokenizes to itself alone and keeps a following space."""
        tok = self.tokenizer
        for text in (tok.eos_token, tok.bos_token, tok.pad_token, tok.unk_token):
            if not text:
                continue
            ids = self._encode(text)
            if len(ids) == 1 and len(self._encode(text + " ")) > 1:
                return text, ids[0]
        return None

    def _ids(self, text: str, continues: bool) -> list[int]:
        if not text:
            return []
        if continues and self._anchor is not None:
            anchor, anchor_id = self._anchor
            ids = self._encode(anchor + text)
            if ids and ids[0] == anchor_id:
                return ids[1:]
        return self._encode(text)

    def _tokenize_segments(self, segments) -> Encoded:
        input_ids: list[int] = []
        labels: list[int] = []
        continues = False  # is there text (or a token) before this piece, with no image in between?
        for part, supervised in segments:
            if isinstance(part, str):
                pieces = part.split(IMAGE_PLACEHOLDER)
                ids: list[int] = []
                for k, piece in enumerate(pieces):
                    if k:
                        ids.append(IMAGE_TOKEN_INDEX)
                        continues = False
                    piece_ids = self._ids(piece, continues)
                    ids += piece_ids
                    continues = continues or bool(piece_ids)
            else:
                ids = list(part)
                # a leading bos is not text: the first word still starts a text (as after the
                # tokenizer's own post-processor), so it is tokenized alone
                continues = continues or not (not input_ids and ids == self.bos)
            input_ids += ids
            labels += [i if supervised and i != IMAGE_TOKEN_INDEX else IGNORE_INDEX for i in ids]
        return Encoded(input_ids, labels)

    def _joint_ids(self, segments) -> list[int]:
        """The same text tokenized in one go between images (ids segments written as their token text)."""
        lead: list[int] = []
        text = ""
        for part, _ in segments:
            if isinstance(part, str):
                text += part
            elif not text and not lead and part == self.bos:
                lead = list(part)  # bos: an id in front, as the tokenizer's own post-processor puts it
            else:
                text += "".join(self.tokenizer.convert_ids_to_tokens(list(part)))
        ids = list(lead)
        for k, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            ids += self._encode(piece) if piece else []
        return ids


class PlainTemplate(Template):
    """Stage 1: ``[bos] <image> caption "\\n"``; labels on the caption and the newline only."""

    name = "plain"
    reads_question = False

    def segments(self, conversations, has_image):
        turns = conversation_turns(conversations)
        if not has_image:
            raise TemplateError("plain_text_only", "the plain template (stage 1) needs an image record")
        if len(turns) != 2:
            raise TemplateError("plain_multi_turn", f"the plain template (stage 1) takes one human/gpt pair, got {len(turns)} turns")
        move_image_first(turns, has_image)  # only its checks: the human text is discarded
        return [(self.bos, False), (IMAGE_PLACEHOLDER, False), (turns[1]["value"] + "\n", True)]

    def prompt_segments(self, user_text):
        # the question is discarded, as in training: the model continues with a caption
        return [(self.bos, False)] + ([(IMAGE_PLACEHOLDER, False)] if IMAGE_PLACEHOLDER in user_text else [])

    def stop_token_ids(self):
        """EOS and the newline that ends every training caption (plain has no EOS)."""
        stops = [self.tokenizer.eos_token_id]
        newline = self._encode("\n")
        if len(newline) == 1 and newline[0] not in stops:
            stops.append(newline[0])
        return stops


def _system_head(system: str) -> str:
    """vicuna_v1's opening: the system prompt and its separator; nothing when a run sets an empty one."""
    return system + " " if system else ""


class VicunaTemplate(Template):
    """Stage 2, ``vicuna_v1`` (separator style TWO, ``seps = [" ", "</s>"]``)::

        {system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

    Supervised: " {a_k}" (the space belongs to the answer, as in the joint string) and the EOS id.
    """

    name = "v1"
    system = VICUNA_SYSTEM

    def __init__(self, tokenizer):
        if tokenizer.eos_token_id is None:
            raise ValueError("template v1 needs a tokenizer with an eos token")
        super().__init__(tokenizer)

    def segments(self, conversations, has_image):
        turns = move_image_first(conversation_turns(conversations), has_image)
        eos = [self.tokenizer.eos_token_id]
        segments: list = [(self.bos, False)]
        head = _system_head(self.system)
        for q, a in zip(turns[0::2], turns[1::2]):
            segments += [(head + "USER: " + q["value"] + " ASSISTANT:", False), (" " + a["value"], True), (eos, True)]
            head = ""
        return segments

    def prompt_segments(self, user_text):
        return [(self.bos, False), (_system_head(self.system) + "USER: " + user_text + " ASSISTANT:", False)]


class ChatTemplate(Template):
    """The tokenizer's own ``chat_template``, rendered progressively: the text up to each assistant
    turn (``add_generation_prompt=True``), then with that turn. Supervised: the assistant text and
    the end-of-turn token the template writes right after it (e.g. ``<|im_end|>``), not what follows
    (the newline). The system prompt is whatever the template adds by default."""

    name = "chat"

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat_template; use 'v1' or set one")
        super().__init__(tokenizer)
        self.end_of_turn_id, self.end_of_turn = self._find_end_of_turn()

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _find_end_of_turn(self) -> tuple[int, str]:
        user = [{"role": "user", "content": "Hi"}]
        prefix = self._render(user, True)
        full = self._render(user + [{"role": "assistant", "content": "Yes"}], False)
        if not full.startswith(prefix) or not full[len(prefix):].lstrip().startswith("Yes"):
            raise ValueError("the tokenizer's chat_template does not render an assistant turn after its generation prompt; "
                             "template 'chat' cannot find the answer boundaries")
        after = full[len(prefix):].lstrip()[len("Yes"):]
        ids = self._encode(after) if after else []
        special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        if not ids or ids[0] not in special:
            raise ValueError(f"the tokenizer's chat_template writes {after!r} after an answer: no end-of-turn token to "
                             "supervise, so the model would never learn to stop")
        return ids[0], self.tokenizer.convert_ids_to_tokens(ids[0])

    def segments(self, conversations, has_image):
        turns = move_image_first(conversation_turns(conversations), has_image)
        messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]
        segments: list = []
        done = ""  # the text rendered so far
        for k in range(0, len(messages), 2):
            prefix = self._render(messages[: k + 1], True)
            full = self._render(messages[: k + 2], False)
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise TemplateError("chat_template_not_incremental",
                                    "the chat_template renders earlier turns differently once later turns are added")
            answer_and_tail = full[len(prefix):]
            cut = answer_and_tail.rfind(self.end_of_turn)
            if cut < 0 or messages[k + 1]["content"].strip() not in answer_and_tail[:cut]:
                raise TemplateError("chat_template_answer", f"the chat_template does not write the answer followed by {self.end_of_turn!r}")
            segments += [(prefix[len(done):], False), (answer_and_tail[:cut], True), ([self.end_of_turn_id], True),
                         (answer_and_tail[cut + len(self.end_of_turn):], False)]
            done = full
        return segments

    def prompt_segments(self, user_text):
        return [(self._render([{"role": "user", "content": user_text}], True), False)]

    def stop_token_ids(self):
        eos = self.tokenizer.eos_token_id
        return [self.end_of_turn_id] + ([eos] if eos is not None and eos != self.end_of_turn_id else [])


class T5Template(Template):
    """Base of the encoder-decoder (Flan-T5) templates: :meth:`encode` gives a :class:`Seq2SeqEncoded`,
    the encoder ids with the image and the decoder labels (the answer + ``</s>``), tokenized as
    CLIP-FlanT5 does. Needs a T5 tokenizer: one that appends ``</s>`` to a text and adds nothing in front."""

    encoder_decoder = True

    def __init__(self, tokenizer):
        if tokenizer.eos_token_id is None:
            raise ValueError(f"template {self.name} needs a tokenizer with an eos token (T5's </s>)")
        super().__init__(tokenizer)
        self.eos = tokenizer.eos_token_id
        probe = "USER: Hi there ASSISTANT: Yes"
        if tokenizer(probe).input_ids != self._encode(probe) + [self.eos]:
            raise ValueError(f"template {self.name} needs a T5 tokenizer, which appends {tokenizer.eos_token!r} to every "
                             f"text and adds nothing in front; {type(tokenizer).__name__} gives "
                             f"{tokenizer.convert_ids_to_tokens(tokenizer(probe).input_ids)} for {probe!r}")

    def encode(self, conversations: list[dict], has_image: bool, *, index: int = 0, epoch: int = 0) -> Seq2SeqEncoded:
        """``conversations`` as in LLaVA JSON. ``index`` and ``epoch`` matter only to templates that
        draw at random (``t5_plain_split_text``): the sample's place in the data set and the epoch."""
        raise NotImplementedError

    def _t5_ids(self, text: str) -> list[int]:
        """``text`` -> encoder or decoder ids as CLIP-FlanT5's ``t5_tokenizer_image_token``: cut at each
        ``<image>``, each chunk tokenized alone (no truncation), chunks joined by one IMAGE_TOKEN_INDEX.

        Quirk kept on purpose: T5's tokenizer appends ``</s>`` to every text it tokenizes, so *every*
        chunk ends in ``</s>``, the one in front of the image too: "Q: <image>\\nA" ->
        [ids("Q:"), </s>, IMAGE, ids("A"), </s>], and "<image>" alone -> [</s>, IMAGE, </s>]. The released
        CLIP-FlanT5 checkpoints were trained on exactly these ids. (T5 has no newline: "\\n" is a space.)"""
        ids: list[int] = []
        for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            ids += self._encode(chunk) + [self.eos]
        return ids

    def _t5_text_only_ids(self, text: str) -> list[int]:
        """The reference's text-only path, ``tokenizer(text, truncation=True, max_length=model_max_length)``:
        one piece, cut on the right to ``model_max_length`` ids with the ``</s>`` kept last."""
        ids = self._encode(text)
        limit = self.tokenizer.model_max_length
        return (ids if len(ids) < limit else ids[: limit - 1]) + [self.eos]

    def _plain_caption(self, conversations, has_image) -> str:
        """Stage 1's checks (as :class:`PlainTemplate`); the caption. The human text is discarded."""
        turns = conversation_turns(conversations)
        if not has_image:
            raise TemplateError("plain_text_only", f"the {self.name} template (stage 1) needs an image record")
        if len(turns) != 2:
            raise TemplateError("plain_multi_turn", f"the {self.name} template (stage 1) takes one human/gpt pair, got {len(turns)} turns")
        move_image_first(turns, has_image)  # only its checks
        return turns[1]["value"]  # + the template's separator, "" in CLIP-FlanT5

    def prompt(self, question: str, has_image: bool) -> list[int]:
        """Generation prompt: the encoder ids (the decoder starts from T5's decoder start token). Stage 1
        discards the question, as in training: "<image>" -> [</s>, IMAGE, </s>]."""
        return self._t5_ids(IMAGE_PLACEHOLDER if has_image else "")


class T5PlainTemplate(T5Template):
    """Stage 1 without the split ("no-split-text" ablation): encoder ``[</s>, IMAGE, </s>]`` (the text
    "<image>": an empty chunk, the image, an empty chunk); labels ``[caption ids..., </s>]``."""

    name = "t5_plain"
    reads_question = False

    def encode(self, conversations, has_image, *, index=0, epoch=0):
        caption = self._plain_caption(conversations, has_image)
        return Seq2SeqEncoded(self._t5_ids(IMAGE_PLACEHOLDER), self._t5_ids(caption))


def caption_split(caption: str, *, seed: int, epoch: int, index: int) -> int:
    """Where ``t5_plain_split_text`` cuts ``caption`` (in characters): 0 for a caption shorter than 2,
    else uniform in ``[1, len // 2]`` (CLIP-FlanT5's ``random.randint(1, text_len // 2)``).

    Seeding: the draw for sample ``index`` in epoch ``epoch`` comes from its own
    ``random.Random(f"t5_plain_split_text:{seed}:{epoch}:{index}")`` (a str seed is hashed with
    SHA-512: the same in every process and Python version, unlike ``hash()``). So a split depends
    only on (seed, epoch, index): the same in every worker and on a resume, different across samples
    and epochs; and (epoch 1, index 0) does not reuse (epoch 0, index 1)'s draw, as seed + epoch +
    index would. The reference draws from the global ``random`` in each ``__getitem__`` (unseeded)."""
    if len(caption) < 2:
        return 0
    return random.Random(f"t5_plain_split_text:{seed}:{epoch}:{index}").randint(1, len(caption) // 2)


class T5PlainSplitTextTemplate(T5Template):
    """Stage 1, CLIP-FlanT5's default: the caption is cut at a random character (it may fall inside a
    word) by :func:`caption_split`; the encoder gets the image and the prefix, the decoder the rest::

        encoder [</s>, IMAGE, ids(caption[:split])..., </s>]    labels [ids(caption[split:])..., </s>]

    Each part is tokenized alone, so the rest of a cut word starts a new word for T5 ("▁uare"), as in
    the reference. The split is re-drawn per (``epoch``, ``index``) of :meth:`encode`, from ``seed``."""

    name = "t5_plain_split_text"
    reads_question = False
    draws_per_epoch = True

    def __init__(self, tokenizer, seed: int = 0):
        super().__init__(tokenizer)
        self.seed = seed

    def encode(self, conversations, has_image, *, index=0, epoch=0):
        caption = self._plain_caption(conversations, has_image)
        split = caption_split(caption, seed=self.seed, epoch=epoch, index=index)
        return Seq2SeqEncoded(self._t5_ids(IMAGE_PLACEHOLDER + caption[:split]), self._t5_ids(caption[split:]))


class T5VicunaTemplate(T5Template):
    """Stage 2, CLIP-FlanT5's ``t5_v1`` (``get_t5_input`` / ``get_t5_output``): the encoder gets the
    conversation up to the last answer, the decoder the last answer alone (no role, no separator)::

        encoder "{system} USER: <image>\\n{q} ASSISTANT: "    labels "{a}" + </s>

    With earlier rounds (a record not flattened) they stay in the encoder text, "USER: {q} ASSISTANT:
    {a} " each, and only the last answer is supervised: flatten with :func:`flatten_single_turns`.
    With an image the text is cut at ``<image>`` (an ``</s>`` before the image); text-only, it is
    tokenized in one piece, cut to ``model_max_length`` (both as the reference)."""

    name = "t5_v1"
    system = VICUNA_SYSTEM
    flattens_turns = True

    def _encoder_text(self, turns: list[dict]) -> str:
        text = _system_head(self.system)
        for k, turn in enumerate(turns[:-1]):
            text += ("USER: ", "ASSISTANT: ")[k % 2] + turn["value"] + " "
        return text + "ASSISTANT: "

    def encode(self, conversations, has_image, *, index=0, epoch=0):
        turns = move_image_first(conversation_turns(conversations), has_image)
        encoder_text, answer = self._encoder_text(turns), turns[-1]["value"]
        if has_image:
            return Seq2SeqEncoded(self._t5_ids(encoder_text), self._t5_ids(answer))
        return Seq2SeqEncoded(self._t5_text_only_ids(encoder_text), self._t5_text_only_ids(answer))

    def prompt(self, question, has_image):
        """The encoder ids of "{system} USER: [<image>\\n]{question} ASSISTANT: "."""
        text = (IMAGE_PLACEHOLDER + "\n" + question) if has_image else question
        return self._t5_ids(self._encoder_text([{"from": "human", "value": text}, {"from": "gpt", "value": ""}]))


TEMPLATES = {"plain": PlainTemplate, "v1": VicunaTemplate, "chat": ChatTemplate,
             "t5_plain": T5PlainTemplate, "t5_plain_split_text": T5PlainSplitTextTemplate, "t5_v1": T5VicunaTemplate}


SYSTEM_PROMPT_TEMPLATES = sorted(n for n, t in TEMPLATES.items() if hasattr(t, "system"))  # a run may set theirs: v1, t5_v1


def get_template(name: str, tokenizer, *, seed: int = 0, system: str | None = None) -> Template:
    """The template ``name`` ("plain" | "v1" | "chat" | "t5_plain" | "t5_plain_split_text" | "t5_v1")
    bound to ``tokenizer``. ``seed``: for ``t5_plain_split_text``'s random caption splits (others draw
    nothing). ``system``: a run's own system prompt instead of vicuna_v1's (``v1`` and ``t5_v1`` only;
    ``""``: none, the text starts at "USER:"); None keeps the template's."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}")
    if system is not None and name not in SYSTEM_PROMPT_TEMPLATES:
        raise ValueError(f"template {name!r} has no system prompt to set (system_prompt: {system!r}); "
                         f"templates with one: {SYSTEM_PROMPT_TEMPLATES}")
    if TEMPLATES[name] is T5PlainSplitTextTemplate:
        template = T5PlainSplitTextTemplate(tokenizer, seed=seed)
    else:
        template = TEMPLATES[name](tokenizer)
    if system is not None:
        template.system = system
    return template


def truncate(enc: Encoded | Seq2SeqEncoded, n_image_tokens: int, max_length: int) -> Encoded | Seq2SeqEncoded | None:
    """Cut ``enc`` at the end so that, with each image expanded to ``n_image_tokens`` positions, it
    fits ``max_length``: spliced length = ``len(ids) - n_img + n_img * n_image_tokens``. A
    :class:`Seq2SeqEncoded`: the encoder ids so, and the decoder labels on their own to ``max_length``.

    None when the cut would fall inside an image span or would leave no supervised token (the caller
    counts it); ``enc`` itself when it fits (and has a supervised token)."""
    kept, length = 0, 0
    for i in enc.input_ids:
        width = n_image_tokens if i == IMAGE_TOKEN_INDEX else 1
        if length + width > max_length:
            if i == IMAGE_TOKEN_INDEX and length < max_length:
                return None  # the image span would be cut
            break
        kept += 1
        length += width
    if isinstance(enc, Seq2SeqEncoded):
        if kept == len(enc.input_ids) and len(enc.labels) <= max_length:
            return enc if enc.labels else None
        cut = Seq2SeqEncoded(enc.input_ids[:kept], enc.labels[:max_length])
        return cut if cut.labels else None
    if kept == len(enc.input_ids):
        out = enc
    else:
        out = Encoded(enc.input_ids[:kept], enc.labels[:kept])
    if all(label == IGNORE_INDEX for label in out.labels):
        return None
    return out
