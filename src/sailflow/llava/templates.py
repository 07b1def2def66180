"""Conversation templates: LLaVA JSON conversations -> ``input_ids`` + ``labels`` (label masking).

Three templates, each a :class:`Template` bound to one tokenizer (no module-level state):

    plain  stage 1 (projector alignment): [bos] <image> caption "\\n"; the human text is discarded;
           the caption and its "\\n" are supervised, no EOS (LLaVA's ``preprocess_plain``)
    v1     stage 2, LLaVA-1.5's ``vicuna_v1``: "{system} USER: {q} ASSISTANT: {a}</s>USER: ..." ;
           each answer (with the space before it) and its EOS are supervised
    chat   the tokenizer's own ``chat_template`` (e.g. Qwen2's ChatML); each assistant content and
           the template's end-of-turn token after it are supervised

Every template builds the text as a list of segments (text or token ids, supervised or not), tokenizes
each segment once and concatenates the ids, so a label boundary is right by construction; LLaVA's
reference code tokenizes rounds again and trusts lengths to add up, which silently zeroes samples when
they do not (pitfall 1). As a check, the joint text is also tokenized in one go; a difference is
counted in ``Template.mismatches`` (the caller warns), the concatenation is still used.

``<image>`` (:data:`IMAGE_PLACEHOLDER`) is a marker in the record text, never a vocabulary token: it
becomes one :data:`IMAGE_TOKEN_INDEX` in ``input_ids``, which the model replaces with the vision
tower's N embeddings. :func:`truncate` cuts an encoded sample to the LLM's context, counting those N.
"""

from __future__ import annotations

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


class Template:
    """A conversation template bound to a tokenizer (a transformers fast tokenizer).

    ``encode`` builds a list of segments ``(text or [ids], supervised)``; text segments are cut at
    ``<image>`` and each piece is tokenized once without special tokens. A piece that continues the
    text (not at the start, not right after an image) is tokenized behind an anchor special token
    that is then removed: SentencePiece-style tokenizers (Llama/Vicuna, Metaspace) prefix "▁" to a
    text's first word, which a word in the middle of the joint text does not get.
    """

    name = ""

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
        head = self.system + " "
        for q, a in zip(turns[0::2], turns[1::2]):
            segments += [(head + "USER: " + q["value"] + " ASSISTANT:", False), (" " + a["value"], True), (eos, True)]
            head = ""
        return segments

    def prompt_segments(self, user_text):
        return [(self.bos, False), (self.system + " USER: " + user_text + " ASSISTANT:", False)]


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


TEMPLATES = {"plain": PlainTemplate, "v1": VicunaTemplate, "chat": ChatTemplate}


def get_template(name: str, tokenizer) -> Template:
    """The template ``name`` ("plain" | "v1" | "chat") bound to ``tokenizer``."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name](tokenizer)


def truncate(enc: Encoded, n_image_tokens: int, max_length: int) -> Encoded | None:
    """Cut ``enc`` at the end so that, with each image expanded to ``n_image_tokens`` positions, it
    fits ``max_length``: spliced length = ``len(ids) - n_img + n_img * n_image_tokens``.

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
    if kept == len(enc.input_ids):
        out = enc
    else:
        out = Encoded(enc.input_ids[:kept], enc.labels[:kept])
    if all(label == IGNORE_INDEX for label in out.labels):
        return None
    return out
