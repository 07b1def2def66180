"""LLaVA training data: records, the dataset, the collator and the modality-length grouped sampler.

Records come from a LLaVA JSON/JSONL file (:func:`read_records`: LCS-558K, mix665k, ...) or straight
from a dataset this pipeline downloaded (:func:`records_from_dataset`: image/caption pairs for stage 1,
read from the webdataset tars by byte offset). Bad records are an error naming the file and the record
id, or (``on_error="drop"``) a drop counted by reason; never silently repaired (LLaVA substitutes a
white image for a missing file).

:class:`LlavaDataset` encodes every record once at construction with a :class:`~sailflow.llava.templates.Template`
and cuts it to ``max_length`` positions counting the image's ``n_image_tokens``; :func:`collate` pads
to the right. With an encoder-decoder (T5) template a sample is encoder ids + decoder labels, stage-2
records are flattened to single turns, and ``t5_plain_split_text`` re-draws its caption split each
epoch (:meth:`LlavaDataset.set_epoch`). :class:`ModalityLengthGroupedSampler` is LLaVA's ``group_by_modality_length``: every
optimiser step is all image records or all text-only records, with records of similar length together.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sailflow.data.images import decode_rgb_as_stored
from sailflow.data.shards import captioned_samples, read_sample_bytes
from sailflow.llava.remgcl import OcrRegion, RegionMapper, RemgclError, parse_ocr
from sailflow.llava.templates import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    Template,
    TemplateError,
    conversation_turns,
    flatten_single_turns,
    truncate,
)


# ---- records ----------------------------------------------------------------------------------
@dataclass
class ImageRef:
    """Where a record's image lives: an image file, or a member of a webdataset tar."""

    path: str  # an image file, or a webdataset tar
    offset: int | None = None  # for tars: the member's byte offset and size (samples.parquet columns)
    size: int | None = None

    def read(self) -> Image.Image:
        """The image as RGB; OSError naming the file when it cannot be read or decoded."""
        try:
            if self.offset is None:
                data = Path(self.path).read_bytes()
            else:
                path = Path(self.path)
                data = read_sample_bytes(path.parent, path.name, self.offset, self.size)
            return decode_rgb_as_stored(data)
        except Exception as e:
            where = self.path if self.offset is None else f"{self.path} (member at offset {self.offset}, {self.size} bytes)"
            raise OSError(f"{where}: cannot read this image ({type(e).__name__}: {e})") from None


@dataclass
class Record:
    """One training conversation; ``source`` is the file it came from (for messages); ``ocr``: precomputed
    OCR regions of its image (the record's ``ocr`` field, :func:`~sailflow.llava.remgcl.parse_ocr`), used
    by REMGCL's local term."""

    id: str
    image: ImageRef | None  # None: a text-only record
    conversations: list[dict]
    source: str = ""
    ocr: list[OcrRegion] = field(default_factory=list)


class RecordError(ValueError):
    """A bad record: the message names the file and the record id."""

    def __init__(self, source, record_id, message: str, reason: str = ""):
        self.source, self.record_id, self.reason = str(source), record_id, reason
        super().__init__(f"{source}: record {record_id}: {message}")


def load_json_records(path, on_error: str = "error", drops: Counter | None = None, examples: dict | None = None) -> list[tuple[str, object]]:
    """(label, item) per record of a JSON array or a JSONL file, as they are (unchecked); label names the
    record's position. A JSONL line that is not JSON raises, or with ``on_error="drop"`` is counted in
    ``drops`` (``bad_json``, an example in ``examples``)."""
    path = Path(path)
    drops = Counter() if drops is None else drops
    examples = {} if examples is None else examples
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        return [(f"#{i}", item) for i, item in enumerate(items)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"on line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            if on_error == "error":
                raise RecordError(path, f"on line {n}", f"not valid JSON ({e.msg}, column {e.colno})", "bad_json") from None
            drops["bad_json"] += 1
            examples.setdefault("bad_json", f"line {n}")
    return out


def _check_record(item, label: str, path: Path, image_folder) -> Record:
    """The Record for one JSON item, or RecordError with a reason."""
    if not isinstance(item, dict):
        raise RecordError(path, label, f"is a {type(item).__name__}, not an object", "bad_format")
    rid = item.get("id")
    if rid is None or str(rid).strip() == "":
        raise RecordError(path, label, "has no id", "missing_id")
    rid = str(rid)
    conversations = item.get("conversations")
    if not isinstance(conversations, list) or not all(isinstance(t, dict) for t in conversations):
        raise RecordError(path, rid, "'conversations' is not a list of {from, value} objects", "bad_format")
    for j, turn in enumerate(conversations):
        if turn.get("from") not in ("human", "gpt"):
            raise RecordError(path, rid, f"turn {j} is from {turn.get('from')!r}, not 'human' or 'gpt'", "bad_format")
        if not isinstance(turn.get("value"), str):
            raise RecordError(path, rid, f"turn {j} has no string 'value'", "bad_format")

    image = item.get("image")
    if isinstance(image, list):
        if len(image) != 1:
            raise RecordError(path, rid, f"has {len(image)} images; one image per record is supported", "two_images")
        image = image[0]
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise RecordError(path, rid, f"'image' is {image!r}, not a file name", "bad_format")
    n_placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conversations)
    if image is None and n_placeholders:
        raise RecordError(path, rid, f"{IMAGE_PLACEHOLDER} in a record without an image", "image_in_text_only")
    if image is not None and n_placeholders == 0:
        raise RecordError(path, rid, f"has an image but no {IMAGE_PLACEHOLDER} in its conversation", "no_image_placeholder")
    if n_placeholders > 1:
        raise RecordError(path, rid, f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholders; one image per record is supported", "two_images")
    if any(IMAGE_PLACEHOLDER in t["value"] for t in conversations if t["from"] == "gpt"):
        raise RecordError(path, rid, f"{IMAGE_PLACEHOLDER} in a gpt turn", "image_in_gpt_turn")
    try:
        conversation_turns(conversations)
    except TemplateError as e:
        raise RecordError(path, rid, str(e), e.reason) from None

    ref = None
    if image is not None:
        file = os.path.join(image_folder, image) if image_folder is not None else image
        if not os.path.isfile(file):
            raise RecordError(path, rid, f"image file {file} does not exist (image_folder {image_folder})", "missing_image")
        ref = ImageRef(file)
    return Record(rid, ref, conversations, str(path), parse_ocr(item, str(path)))


def read_records(path, image_folder, *, on_error: str = "error", log=sys.stderr) -> tuple[list[Record], Counter]:
    """Records of a LLaVA JSON array or JSONL file; ``image`` is relative to ``image_folder``.

    Checks, each with its own message naming the file and the record id: the id is present; the
    turns are human/gpt objects with string values, alternate (after a leading gpt turn, which is
    dropped as LLaVA does) and end with gpt, none empty; an image record has exactly one ``<image>``
    (in a human turn) and a file that exists; a text-only record has none; an ``ocr`` field, where present,
    is a list of ``{text, box}`` regions (reason ``bad_ocr``). ``on_error="error"`` raises
    :class:`RecordError` at the first bad record; ``"drop"`` skips it and counts it by reason (printed
    to ``log`` with an example). Returns ``(records, drops)``."""
    if on_error not in ("error", "drop"):
        raise ValueError(f"on_error must be 'error' or 'drop', not {on_error!r}")
    path = Path(path)
    drops: Counter = Counter()
    examples: dict[str, str] = {}
    records = []
    for label, item in load_json_records(path, on_error, drops, examples):
        try:
            records.append(_check_record(item, label, path, image_folder))
        except RecordError as e:
            if on_error == "error":
                raise
            drops[e.reason] += 1
            examples.setdefault(e.reason, str(e))
    if drops:
        print(f"[llava data] {path}: kept {len(records)} records, dropped {sum(drops.values())}: {dict(sorted(drops.items()))}", file=log)
        for reason, example in sorted(examples.items()):
            print(f"[llava data]   {reason}, e.g. {example}", file=log)
    return records, drops


def records_from_dataset(samples_parquets: list, images_dirs: list, caption_source: str, *, dataset: str) -> tuple[list[Record], Counter]:
    """Stage-1 records from a dataset this pipeline downloaded: row r of each chunk's ``samples.parquet``
    (columns sample_id, shard, offset, size and one per caption source) becomes the plain record
    human ``"<image>"`` / gpt caption, id ``"{dataset}/{sample_id}"``, its image read from
    ``images_dir/shard`` at ``offset``. ``images_dirs[k]`` holds the tars of ``samples_parquets[k]``.
    Rows with an empty caption are a counted drop (``empty_caption``)."""
    if len(samples_parquets) != len(images_dirs):
        raise ValueError(f"{dataset}: {len(samples_parquets)} samples.parquet files but {len(images_dirs)} image folders")
    records: list[Record] = []
    drops: Counter = Counter()
    for samples_path, images_dir in zip(samples_parquets, images_dirs):
        samples, empty = captioned_samples(samples_path, caption_source)
        drops["empty_caption"] += empty
        for sid, shard, offset, size, caption in zip(samples["sample_id"], samples["shard"], samples["offset"], samples["size"],
                                                     samples[caption_source]):
            conversations = [{"from": "human", "value": IMAGE_PLACEHOLDER}, {"from": "gpt", "value": str(caption)}]
            ref = ImageRef(str(Path(images_dir) / shard), int(offset), int(size))
            records.append(Record(f"{dataset}/{sid}", ref, conversations, str(samples_path)))
    return records, +drops


# ---- dataset -------------------------------------------------------------------------------
class LlavaDataset(torch.utils.data.Dataset):
    """Item i: ``input_ids`` LongTensor[L], ``labels`` LongTensor[L], ``pixel_values`` FloatTensor[3, H, W]
    (zeros for a text-only record, which still runs through the tower), ``has_image`` bool.

    With an encoder-decoder template (T5: ``template.encoder_decoder``) ``input_ids`` are the encoder's
    ids (with the image) and ``labels`` LongTensor[T] the decoder's (the answer + ``</s>``, every one
    supervised), two sequences of their own lengths. A template that supervises one answer per sample
    (``t5_v1``: ``template.flattens_turns``) gets multi-turn records flattened to one record per
    (human, gpt) pair first (:func:`~sailflow.llava.templates.flatten_single_turns`, CLIP-FlanT5's
    converter; counted in the log). A template that draws at random (``t5_plain_split_text``:
    ``template.draws_per_epoch``) re-encodes item i in ``__getitem__`` with ``index=i`` and the epoch of
    :meth:`set_epoch` (the trainer calls it at each epoch's start, before the DataLoader starts its
    workers); lengths and counts are those of epoch 0.

    ``preprocess(PIL RGB) -> FloatTensor[3, H, W]`` is the tower's processor (incl. ``pad``);
    ``image_size = (H, W)`` sizes the text-only records' zero image. Every record is encoded once
    here, so lengths are known and ids are stored compactly (one int32 array, shared by DataLoader
    workers). A record the template cannot encode (``on_error="error"``: :class:`RecordError`) or
    that truncates to nothing is dropped and counted in ``drops``; ``truncated`` counts records kept
    with their end cut; ``mismatches`` counts conversations whose joint tokenization differs from the
    segment-wise one (labels are still right; a tokenizer/template that does not suit each other).

    ``lengths``: positions after splicing the image in (text tokens + ``n_image_tokens``; an
    encoder-decoder: encoder positions + decoder labels); ``modality_lengths``: +length for image
    records, -length for text-only (LLaVA counts words; we count tokens, the quantity that actually
    fills the context).

    ``regions`` (REMGCL's local term): items also carry ``ocr_regions``, the record's OCR regions mapped
    onto the tower's patch grid (a list of :class:`~sailflow.llava.remgcl.RegionTokens`; empty for a
    record without regions). A box outside its image is a :class:`RecordError` naming the record."""

    def __init__(self, records: list[Record], template: Template, preprocess, n_image_tokens: int, max_length: int,
                 image_size: tuple[int, int], *, on_error: str = "error", log=sys.stderr,
                 regions: RegionMapper | None = None):
        if on_error not in ("error", "drop"):
            raise ValueError(f"on_error must be 'error' or 'drop', not {on_error!r}")
        if n_image_tokens < 1 or max_length <= n_image_tokens:
            raise ValueError(f"max_length {max_length} leaves no room for text next to {n_image_tokens} image tokens")
        self.template, self.preprocess = template, preprocess
        self.n_image_tokens, self.max_length = n_image_tokens, max_length
        self.regions = regions
        self.image_size = tuple(image_size)
        self.seq2seq = bool(template.encoder_decoder)
        self.epoch = 0
        self.drops: Counter = Counter()
        self.truncated = 0
        self.flattened = (0, 0)  # (multi-turn records, the single-turn records made of them)
        if template.flattens_turns:
            records = self._flatten(records, on_error)
        mismatches_before = template.mismatches
        kept: list[Record] = []
        ids: list[np.ndarray] = []
        targets: list[np.ndarray] = []  # decoder-only: the supervised mask (bool); encoder-decoder: the labels
        self.lengths: list[int] = []
        self.modality_lengths: list[int] = []
        for rec in records:
            has_image = rec.image is not None
            try:
                enc = self._encode(rec, len(kept), 0)  # its index if kept
            except TemplateError as e:
                if on_error == "error":
                    raise RecordError(rec.source, rec.id, f"template {template.name!r}: {e}", e.reason) from None
                self.drops[e.reason] += 1
                continue
            cut = truncate(enc, n_image_tokens, max_length)
            if cut is None:
                fits = _spliced_length(enc.input_ids, n_image_tokens) <= max_length
                self.drops["no_supervised_tokens" if fits else "truncated"] += 1
                continue
            self.truncated += cut is not enc
            kept.append(rec)
            ids.append(np.asarray(cut.input_ids, dtype=np.int32))
            if self.seq2seq:
                targets.append(np.asarray(cut.labels, dtype=np.int32))
            else:
                targets.append(np.asarray(cut.labels, dtype=np.int64) != IGNORE_INDEX)
            n = _spliced_length(cut.input_ids, n_image_tokens) + (len(cut.labels) if self.seq2seq else 0)
            self.lengths.append(n)
            self.modality_lengths.append(n if has_image else -n)
        self.mismatches = template.mismatches - mismatches_before
        if not kept:
            raise ValueError(f"no record left to train on: {len(records)} records, dropped {dict(self.drops)}")
        self.records = kept
        self._offsets = np.cumsum([0] + [len(a) for a in ids])
        self._ids = np.concatenate(ids)
        self._target_offsets = np.cumsum([0] + [len(a) for a in targets])
        self._targets = np.concatenate(targets)
        n_image = sum(1 for rec in kept if rec.image is not None)
        flat = (f", {self.flattened[0]} multi-turn records flattened into {self.flattened[1]} single-turn ones"
                if template.flattens_turns else "")
        print(f"[llava data] template {template.name}: {len(kept)} records ({n_image} with an image, {len(kept) - n_image} "
              f"text-only){flat}, dropped {sum(self.drops.values())} {dict(sorted(self.drops.items()))}, "
              f"truncated {self.truncated}, max_length {max_length} incl. {n_image_tokens} image tokens", file=log)
        if self.mismatches:
            print(f"[llava data] WARNING: {self.mismatches} conversations tokenize differently in one go than segment by "
                  f"segment with template {template.name!r}: labels are right, but the tokenizer may not suit the template",
                  file=log)

    def _flatten(self, records: list[Record], on_error: str) -> list[Record]:
        """One record per (human, gpt) pair of each multi-turn record (ids ``{id}-turn{k}`` for k >= 1)."""
        out: list[Record] = []
        multi, made = 0, 0
        for rec in records:
            item = {"id": rec.id, "conversations": rec.conversations, **({"image": rec.image} if rec.image is not None else {})}
            try:
                pairs = flatten_single_turns(item)
            except TemplateError as e:
                if on_error == "error":
                    raise RecordError(rec.source, rec.id, f"template {self.template.name!r}: {e}", e.reason) from None
                self.drops[e.reason] += 1
                continue
            if len(pairs) > 1:
                multi, made = multi + 1, made + len(pairs)
            out += [Record(str(p["id"]), p.get("image"), p["conversations"], rec.source, rec.ocr) for p in pairs]
        self.flattened = (multi, made)
        return out

    def _encode(self, rec: Record, index: int, epoch: int):
        has_image = rec.image is not None
        if self.seq2seq:
            return self.template.encode(rec.conversations, has_image, index=index, epoch=epoch)
        return self.template.encode(rec.conversations, has_image)

    def set_epoch(self, epoch: int) -> None:
        """The epoch that :meth:`__getitem__` encodes for (templates that draw per epoch). Set it before the
        DataLoader's workers start (they copy the dataset): transformers' Trainer makes new workers each
        epoch unless ``dataloader_persistent_workers``, which would keep epoch 0's draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        """An image that cannot be read is a :class:`RecordError` naming the file and the record id
        (whatever ``on_error``: a map-style dataset cannot skip an item; check images beforehand)."""
        rec = self.records[i]
        if self.template.draws_per_epoch:
            enc = truncate(self._encode(rec, i, self.epoch), self.n_image_tokens, self.max_length)
            if enc is None:  # a T5 stage-1 sample always fits once epoch 0's did (the image comes first)
                raise RecordError(rec.source, rec.id, f"epoch {self.epoch}'s encoding does not fit max_length {self.max_length}",
                                  "truncated")
            input_ids, labels = torch.tensor(enc.input_ids, dtype=torch.long), torch.tensor(enc.labels, dtype=torch.long)
        else:
            a, b = self._offsets[i], self._offsets[i + 1]
            input_ids = torch.from_numpy(self._ids[a:b].astype(np.int64))
            target = self._targets[self._target_offsets[i] : self._target_offsets[i + 1]]
            if self.seq2seq:
                labels = torch.from_numpy(target.astype(np.int64))
            else:
                labels = torch.where(torch.from_numpy(target), input_ids, IGNORE_INDEX)
        image = None
        if rec.image is None:
            pixel_values = torch.zeros(3, *self.image_size)
        else:
            try:
                image = rec.image.read()
            except OSError as e:
                raise RecordError(rec.source, rec.id, str(e), "unreadable_image") from None
            pixel_values = self.preprocess(image)
            if tuple(pixel_values.shape) != (3, *self.image_size):
                raise ValueError(f"preprocess gave an image of shape {tuple(pixel_values.shape)}, "
                                 f"but the dataset was set up for {(3, *self.image_size)}")
        item = {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values, "has_image": rec.image is not None}
        if self.regions is not None:
            item["ocr_regions"] = []
            if image is not None and rec.ocr:
                try:
                    item["ocr_regions"] = self.regions(rec.ocr, *image.size)
                except RemgclError as e:
                    raise RecordError(rec.source, rec.id, f"{e} (image {rec.image.path})", "bad_ocr") from None
        return item


def _spliced_length(input_ids, n_image_tokens: int) -> int:
    n_img = sum(1 for i in input_ids if i == IMAGE_TOKEN_INDEX)
    return len(input_ids) - n_img + n_img * n_image_tokens


def collate(batch: list[dict], pad_token_id: int) -> dict:
    """Right padding (training): ``input_ids`` [B, L] (``pad_token_id``), ``labels`` [B, L]
    (IGNORE_INDEX), ``attention_mask`` [B, L] bool (from the lengths, so a pad id that is also a real
    token is still attended), ``pixel_values`` [B, 3, H, W], ``has_image`` BoolTensor [B].

    Encoder-decoder items (labels a sequence of their own): ``input_ids`` / ``attention_mask`` [B, L] the
    encoder's, ``labels`` [B, T] padded to the longest labels with IGNORE_INDEX.

    Items with ``ocr_regions`` (REMGCL): ``ocr_regions`` is passed through, one list per sample."""
    width = max(len(item["input_ids"]) for item in batch)
    depth = max(len(item["labels"]) for item in batch)  # = width for a decoder (aligned labels)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), depth), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for b, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[b, :n] = item["input_ids"]
        labels[b, : len(item["labels"])] = item["labels"]
        attention_mask[b, :n] = True
    if not (labels != IGNORE_INDEX).any():
        raise ValueError("a batch without any supervised token (every label is IGNORE_INDEX)")
    shapes = {tuple(item["pixel_values"].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f"images of different shapes in one batch: {sorted(shapes)}")
    out = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "has_image": torch.tensor([bool(item["has_image"]) for item in batch], dtype=torch.bool),
    }
    if any("ocr_regions" in item for item in batch):
        out["ocr_regions"] = [list(item.get("ocr_regions", [])) for item in batch]
    return out


# ---- the sampler (LLaVA's llava_trainer.py) ---------------------------------------------------
def split_to_even_chunks(indices: list[int], lengths, num_chunks: int) -> list[list[int]]:
    """Deal ``indices`` (sorted by length, longest first) into ``num_chunks`` equal chunks, each to
    the chunk with the least total length so far; a full chunk takes no more. When the count does not
    divide, deal round-robin (as LLaVA does)."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = math.inf
    return chunks


def length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None) -> list[int]:
    """A random order in which each megabatch (``world_size * batch_size`` indices: one optimiser step
    over all ranks, or ranks x accumulation steps) is sorted by length and split evenly into
    ``world_size`` batches of similar total length."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    out: list[int] = []
    for start in range(0, len(indices), megabatch_size):
        megabatch = sorted(indices[start : start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            out += chunk
    return out


def modality_length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None) -> list[int]:
    """LLaVA's ``get_modality_length_grouped_indices``: ``lengths`` > 0 for image records, < 0 for
    text-only. Each modality is length-grouped on its own and cut into megabatches of
    ``world_size * batch_size``; the full megabatches of both modalities are shuffled together, and
    the partial last ones are merged into one final mixed megabatch. So every optimiser step but the
    last (or last two) holds a single modality. With only one modality present: plain length
    grouping (LLaVA crashes there)."""
    lengths = list(lengths)
    if any(length == 0 for length in lengths):
        raise ValueError("a record of length 0: lengths must be > 0 (image) or < 0 (text-only)")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return length_grouped_indices([abs(length) for length in lengths], batch_size, world_size, generator)
    mm = [i for i, length in enumerate(lengths) if length > 0]
    lang = [i for i, length in enumerate(lengths) if length < 0]
    mm_order = [mm[i] for i in length_grouped_indices([lengths[i] for i in mm], batch_size, world_size, generator)]
    lang_order = [lang[i] for i in length_grouped_indices([-lengths[i] for i in lang], batch_size, world_size, generator)]
    megabatch_size = world_size * batch_size
    megabatches, last = [], []
    for order in (mm_order, lang_order):
        cut = len(order) - len(order) % megabatch_size
        megabatches += [order[i : i + megabatch_size] for i in range(0, cut, megabatch_size)]
        last += order[cut:]
    megabatches = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    if last:
        megabatches.append(sorted(last))
    return [i for megabatch in megabatches for i in megabatch]


class ModalityLengthGroupedSampler(torch.utils.data.Sampler):
    """The global index stream of :func:`modality_length_grouped_indices` (not per rank: the trainer
    shards it across ranks). ``lengths``: ``LlavaDataset.modality_lengths``; ``world_size``: ranks x
    gradient-accumulation steps, so a megabatch is one optimiser step. A new order per epoch
    (``set_epoch``), from an explicit generator seeded with ``seed + epoch``, never the global RNG."""

    def __init__(self, lengths, batch_size: int, world_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size, self.world_size, self.seed = batch_size, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator))
