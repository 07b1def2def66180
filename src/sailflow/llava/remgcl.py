"""REMGCL's multi-granularity loss for text-rich images (reference llava_family.md section 7.2):

    L = L_LM + lambda_global * L_global + lambda_local * L_local

    L_global  per sample b with an image and at least one content answer token:
                  -cos(t_b, v_b) / temperature_global
              t_b  mean LLM input embedding of the supervised answer tokens (labels != IGNORE_INDEX)
                   minus stop words (:func:`stop_word_ids`)
              v_b  mean of the sample's projected visual tokens (all of them)
              averaged over those samples; 0 when there is none.
    L_local   per OCR region r whose box covers at least one patch cell:
                  -cos(o_r, u_r) / temperature_local
              o_r  mean LLM input embedding of the region's text tokens (no special tokens)
              u_r  mean of the projected visual tokens of the cells the box covers (:func:`box_to_tokens`)
              averaged over those regions of the batch; 0 when there is none.

As in the reference, there are no negatives: its ``-log exp(cos / tau)`` is exactly ``-cos / tau``, so
both terms only pull positive pairs together (a term lies in ``[-1/tau, 1/tau]``). Fixed here: the patch
grid comes from the tower (:func:`patch_grid`; the reference assumed 14x14), an empty answer set or a
sample without regions contributes nothing instead of NaN, a region covering no cell is skipped and
counted, and OCR is precomputed and stored with the record (``ocr`` field, :func:`parse_ocr`) instead
of running PaddleOCR inside the training step.

Boxes are ``[x0, y0, x1, y1]`` in pixels of the record's image file (origin top-left, x right, y
down), as an OCR engine reports them. For the tower's ``pad`` preprocessing (REMGCL's stage),
:func:`pad_box` moves a box onto the padded square that the tower sees, and the patch grid tiles that
square (exact for CLIP's processor, whose crop is then a no-op; a processor that crops the square
further, e.g. DINOv2's 256 -> 224, shifts the cells by up to its crop margin).

Wiring into a training step: the dataset turns a record's regions into :class:`RegionTokens`
(:class:`RegionMapper`: :func:`pad_box` then :func:`prepare_regions`, on the CPU workers) and the collator
passes one list per sample (``ocr_regions``); the model computes ``image_features``, splices them with
:meth:`LlavaModel.prepare`, and calls :class:`RemgclLoss` with the LM loss, the spliced ``inputs_embeds``
and ``labels`` (aligned: position t holds the embedding of the token labelled at t), ``image_features``
and ``embed_tokens``. Under gradient accumulation the trainer gives it the optimiser step's counts
(:meth:`RemgclLoss.count` summed over the step's micro-batches), so each term is normalised over the step
as the LM loss is by ``num_items_in_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sailflow.llava.templates import IGNORE_INDEX

# The reference hard-codes LLaMA token ids of punctuation, "\n", "The", "image", "This", "suggests"
# and English stop words; these are the same words, tokenised with the run's own tokenizer.
DEFAULT_STOP_WORDS = (
    ".", ",", ":", ";", "!", "?", "'", '"', "(", ")", "-", "\n",
    "The", "This", "image", "suggests", "There", "It", "In",
    "a", "an", "the", "this", "that", "these", "those", "there", "it", "its", "is", "are", "was", "were",
    "be", "been", "being", "has", "have", "had", "do", "does", "of", "in", "on", "at", "to", "for", "with",
    "from", "by", "as", "and", "or", "but", "which", "who", "what", "also", "can", "could", "may", "some",
    "such", "so", "than", "then", "very", "into", "about", "i", "you", "he", "she", "they", "we",
)


class RemgclError(ValueError):
    pass


@dataclass
class RemgclSettings:
    """The loss's settings; defaults are the reference's (lambda 0.01, tau 0.5 for both terms, a cell
    counts when the box covers >= 5% of it)."""

    lambda_global: float = 0.01
    lambda_local: float = 0.01
    temperature_global: float = 0.5
    temperature_local: float = 0.5
    stop_words: tuple[str, ...] = field(default_factory=lambda: DEFAULT_STOP_WORDS)
    min_overlap: float = 0.05

    def __post_init__(self):
        for name in ("lambda_global", "lambda_local"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise RemgclError(f"remgcl {name} must be a number >= 0, not {v!r}")
        for name in ("temperature_global", "temperature_local"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise RemgclError(f"remgcl {name} must be a number > 0, not {v!r}")
        _check_min_overlap(self.min_overlap)
        if isinstance(self.stop_words, str) or not all(isinstance(w, str) and w for w in self.stop_words):
            raise RemgclError(f"remgcl stop_words must be a list of non-empty strings, not {self.stop_words!r}")
        self.stop_words = tuple(self.stop_words)

    @classmethod
    def from_config(cls, cfg: dict | None) -> RemgclSettings:
        """Settings from a config mapping (missing keys take the defaults; unknown keys are an error)."""
        cfg = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise RemgclError(f"remgcl: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**cfg)

    def to_dict(self) -> dict:
        return {**asdict(self), "stop_words": list(self.stop_words)}


def _check_min_overlap(v) -> None:
    if not (isinstance(v, (int, float)) and 0 < v <= 1):
        raise RemgclError(f"remgcl min_overlap must be a fraction in (0, 1], not {v!r}")


# ---- stop words -----------------------------------------------------------------------------------


def stop_word_ids(tokenizer, words: Sequence[str], *, special: bool = True) -> tuple[tuple[int, ...], ...]:
    """The token-id sequences that spell each of ``words`` with ``tokenizer``, as ``word`` and as
    ``" " + word`` (byte-level BPE gives the two different ids; SentencePiece adds its own prefix
    space). A leading whitespace-only token is also dropped, as its own variant (SentencePiece's lone
    "\u2581" before "\\n"), so the sequence matches the word in running text. With ``special``, the
    tokenizer's special tokens are added as one-token sequences (EOS ends every answer and says
    nothing about the image). Sequences with the unknown token are left out. Sorted, unique."""
    out: set[tuple[int, ...]] = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    for word in words:
        if not isinstance(word, str) or not word:
            raise RemgclError(f"stop words must be non-empty strings, not {word!r}")
        for form in (word, " " + word):
            ids = tuple(tokenizer(form, add_special_tokens=False).input_ids)
            variants = [ids]
            if len(ids) > 1 and not tokenizer.decode([ids[0]]).strip():
                variants.append(ids[1:])
            out.update(v for v in variants if v and (unk is None or unk not in v))
    if special:
        out.update((int(i),) for i in getattr(tokenizer, "all_special_ids", []))
    return tuple(sorted(out))


def answer_mask(labels: torch.Tensor, stop_ids: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """``[B, T]`` bool: supervised positions (``labels != IGNORE_INDEX``) that are not part of a
    stop-word sequence. A sequence is matched as a whole run of consecutive labels (so a multi-token
    stop word removes nothing when only its first piece occurs)."""
    mask = labels != IGNORE_INDEX
    if not stop_ids or labels.shape[-1] == 0:
        return mask
    T = labels.shape[-1]
    stop = torch.zeros_like(mask)
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for seq in stop_ids:
        by_length.setdefault(len(seq), []).append(tuple(int(i) for i in seq))
    for n, seqs in by_length.items():
        if n == 0 or n > T:
            continue
        pattern = torch.tensor(seqs, dtype=labels.dtype, device=labels.device)  # [S, n]
        if n == 1:
            stop |= torch.isin(labels, pattern[:, 0])
            continue
        windows = labels.unfold(-1, n, 1)  # [B, T - n + 1, n]
        hit = (windows.unsqueeze(-2) == pattern).all(-1).any(-1)  # [B, T - n + 1]: a sequence starts here
        for k in range(n):
            stop[..., k : k + hit.shape[-1]] |= hit
    return mask & ~stop


# ---- the patch grid and boxes -------------------------------------------------------------------------


def _pair(v, name: str) -> tuple[int, int]:
    """An int or a (height, width) pair of positive ints."""
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in pair):
        raise RemgclError(f"{name} must be a positive int or a (height, width) pair of them, not {v!r}")
    return pair


def patch_grid(image_size, patch_size, *, n_tokens: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of the tower's patch tokens: ``image_size / patch_size`` per side (both an int
    or a ``(height, width)`` pair, in pixels of the tower's input): 224 / 14 -> (16, 16), 336 / 14 ->
    (24, 24). ``n_tokens`` (the image tokens per image the LLM sees) must then equal rows * cols: a
    connector that compresses tokens (the resampler) has no grid, so the local term cannot apply."""
    (h, w), (ph, pw) = _pair(image_size, "image_size"), _pair(patch_size, "patch_size")
    if h % ph or w % pw:
        raise RemgclError(f"image size {h}x{w} is not a whole number of {ph}x{pw} patches; "
                          "the patch grid must tile the tower's input")
    grid = (h // ph, w // pw)
    if n_tokens is not None and n_tokens != grid[0] * grid[1]:
        raise RemgclError(f"the tower's {grid[0]}x{grid[1]} patch grid has {grid[0] * grid[1]} cells but the LLM sees "
                          f"{n_tokens} image tokens per image; REMGCL's local term needs one token per patch "
                          "(use an MLP or linear connector, not a resampler, or set lambda_local to 0)")
    return grid


def _check_box(box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    h, w = image_size
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        raise RemgclError(f"box {box!r} is not [x0, y0, x1, y1] (four finite numbers, pixels)")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise RemgclError(f"box {list(box)} is empty: it needs x0 < x1 and y0 < y1 ([x0, y0, x1, y1], pixels)")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise RemgclError(f"box {list(box)} reaches outside the {w}x{h} (width x height) image; boxes are pixels of the "
                          "image, within [0, width] x [0, height] (clip them when precomputing the OCR)")
    return x0, y0, x1, y1


def box_to_tokens(box, grid: tuple[int, int], image_size, min_overlap: float = 0.05) -> list[int]:
    """The row-major indices (``row * cols + col``) of the patch cells that ``box`` covers, ascending.

    ``box`` is ``[x0, y0, x1, y1]`` in pixels of an image of ``image_size`` (an int side or a
    ``(height, width)`` pair) that the ``grid`` (``(rows, cols)``, :func:`patch_grid`) tiles evenly:
    the image the tower sees, at any resolution (for ``pad``, the padded square: :func:`pad_box`).
    A cell counts when the box covers at least ``min_overlap`` of **the cell's area** (the reference's
    ``get_block_indices``), so a box smaller than that inside one cell covers none (empty list).
    An empty, non-finite or out-of-image box is an error."""
    rows, cols = _pair(grid, "grid")
    h, w = _pair(image_size, "image_size")
    _check_min_overlap(min_overlap)
    x0, y0, x1, y1 = _check_box(box, (h, w))
    cw, ch = w / cols, h / rows
    need = min_overlap * cw * ch * (1 - 1e-9)  # ">=": a cell covered exactly min_overlap counts despite rounding

    def spans(a: float, b: float, size: float, n: int) -> list[tuple[int, float]]:
        first, last = int(a // size), min(n - 1, int(math.ceil(b / size)) - 1)
        return [(i, min(b, (i + 1) * size) - max(a, i * size)) for i in range(first, last + 1)]

    xs, ys = spans(x0, x1, cw, cols), spans(y0, y1, ch, rows)
    return [r * cols + c for r, dy in ys for c, dx in xs if dx > 0 and dy > 0 and dx * dy >= need]


def pad_box(box, width: int, height: int) -> tuple[list[float], int]:
    """A box in pixels of a ``width`` x ``height`` image -> ``(box, side)`` on the ``side`` x ``side``
    square that ``expand2square`` centres it on (offsets ``(side - width) // 2``, ``(side - height) // 2``,
    as :func:`sailflow.llava.towers.expand2square`)."""
    x0, y0, x1, y1 = _check_box(box, (height, width))
    side = max(width, height)
    dx, dy = (side - width) // 2, (side - height) // 2
    return [x0 + dx, y0 + dy, x1 + dx, y1 + dy], side


# ---- OCR regions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcrRegion:
    text: str
    box: tuple[float, float, float, float]  # [x0, y0, x1, y1], pixels of the record's image


@dataclass(frozen=True)
class RegionTokens:
    """One OCR region ready for the loss: its text's token ids and the patch cells it covers."""

    text_ids: tuple[int, ...]
    patches: tuple[int, ...]  # row-major indices into the sample's image tokens; empty: the region is skipped


def parse_ocr(record: dict, where: str) -> list[OcrRegion]:
    """The OCR regions of a record's ``ocr`` field: a list of ``{"text": str, "box": [x0, y0, x1, y1]}``
    in pixels of the record's image (extra keys such as a confidence are ignored; a PaddleOCR
    quadrilateral ``[[x, y] x 4]`` is accepted as its axis-aligned hull, as the reference does). No
    field, null or ``[]``: no regions. A malformed entry is a :class:`~sailflow.llava.data.RecordError`
    naming ``where`` (the file) and the record id, reason ``bad_ocr``. Whether a box lies inside the
    image is checked when it is mapped (:func:`box_to_tokens`), once the image size is known."""
    from sailflow.llava.data import RecordError

    rid = record.get("id", "?") if isinstance(record, dict) else "?"

    def bad(message: str):
        return RecordError(where, rid, message + ' (expected "ocr": [{"text": "...", "box": [x0, y0, x1, y1]}, ...], '
                           "pixels of the image)", "bad_ocr")

    ocr = record.get("ocr") if isinstance(record, dict) else None
    if ocr is None:
        return []
    if not isinstance(ocr, list):
        raise bad(f"'ocr' is a {type(ocr).__name__}, not a list")
    if ocr and not record.get("image"):
        raise bad("has OCR regions but no image")
    regions = []
    for i, entry in enumerate(ocr):
        if not isinstance(entry, dict):
            raise bad(f"ocr[{i}] is a {type(entry).__name__}, not an object")
        text, box = entry.get("text"), entry.get("box")
        if not isinstance(text, str) or not text.strip():
            raise bad(f"ocr[{i}] has no non-empty string 'text' (got {text!r})")
        if isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in box):
            xs, ys = [p[0] for p in box], [p[1] for p in box]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs + ys):
                box = [min(xs), min(ys), max(xs), max(ys)]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            raise bad(f"ocr[{i}] 'box' is {box!r}, not four finite numbers [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x0 < x1 and y0 < y1):
            raise bad(f"ocr[{i}] 'box' {list(box)} is empty: it needs x0 < x1 and y0 < y1")
        if x0 < 0 or y0 < 0:
            raise bad(f"ocr[{i}] 'box' {list(box)} has a negative coordinate")
        regions.append(OcrRegion(text, (x0, y0, x1, y1)))
    return regions


def prepare_regions(regions: Sequence[OcrRegion], tokenizer, grid: tuple[int, int], image_size,
                    min_overlap: float = 0.05, where: str = "") -> list[RegionTokens]:
    """Each region's text ids (``tokenizer(text)`` without special tokens: the reference drops the BOS)
    and covered cells (:func:`box_to_tokens`; boxes already in pixels of ``image_size``, e.g. moved
    by :func:`pad_box`). A region covering no cell keeps empty ``patches``: the loss skips and counts
    it. A box outside the image is a :class:`RemgclError` prefixed with ``where`` (name the record)."""
    out = []
    for i, r in enumerate(regions):
        try:
            patches = box_to_tokens(r.box, grid, image_size, min_overlap)
        except RemgclError as e:
            raise RemgclError(f"{where}: ocr[{i}]: {e}" if where else f"ocr[{i}]: {e}") from None
        ids = tuple(tokenizer(r.text, add_special_tokens=False).input_ids)
        out.append(RegionTokens(ids, tuple(patches)))
    return out


@dataclass
class RegionMapper:
    """A record's OCR regions -> :class:`RegionTokens` for a tower that pads images to a square (``pad``):
    each box moves onto the ``max(width, height)`` square (:func:`pad_box`) that ``grid`` (the tower's
    :func:`patch_grid`) tiles. Called by the dataset with the image's size, on its workers."""

    tokenizer: object
    grid: tuple[int, int]
    min_overlap: float = 0.05

    def __call__(self, regions: Sequence[OcrRegion], width: int, height: int) -> list[RegionTokens]:
        """A box outside the ``width`` x ``height`` image is a :class:`RemgclError` naming ``ocr[i]``."""
        moved = []
        for i, r in enumerate(regions):
            try:
                box, side = pad_box(r.box, width, height)
            except RemgclError as e:
                raise RemgclError(f"ocr[{i}]: {e}") from None
            moved.append(OcrRegion(r.text, tuple(box)))
        return prepare_regions(moved, self.tokenizer, self.grid, max(width, height), self.min_overlap)


# ---- the two terms ----------------------------------------------------------------------------------------


@dataclass
class TermResult:
    """One auxiliary term: ``loss`` (a scalar; the mean over the ``used`` items, 0 when none), the
    number of items averaged, and the number skipped (samples with an image but no content answer
    token; regions covering no cell or with no text token)."""

    loss: torch.Tensor
    used: int
    skipped: int


def global_loss(inputs_embeds: torch.Tensor, labels: torch.Tensor, image_features: torch.Tensor,
                stop_ids: Sequence[Sequence[int]] = (), temperature: float = 0.5,
                has_image: torch.Tensor | None = None) -> TermResult:
    """REMGCL's global term: mean over samples of ``-cos(t_b, v_b) / temperature``.

    ``inputs_embeds`` ``[B, T, d]`` and ``labels`` ``[B, T]`` are aligned (position t embeds the
    token labelled at t; IGNORE_INDEX where not supervised), as :meth:`LlavaModel.prepare` returns
    them; ``t_b`` is the mean of ``inputs_embeds`` over :func:`answer_mask`. ``image_features``
    ``[B, N, d]``: the projected visual tokens; ``v_b`` is their mean. Samples without an image
    (``has_image`` [B] bool False) are left out; samples whose answer is all stop words are skipped
    (counted). Computed in float32."""
    if inputs_embeds.dim() != 3 or labels.shape != inputs_embeds.shape[:2] or image_features.dim() != 3 \
            or image_features.shape[0] != labels.shape[0] or image_features.shape[-1] != inputs_embeds.shape[-1]:
        raise RemgclError(f"global_loss: shapes inputs_embeds {tuple(inputs_embeds.shape)}, labels {tuple(labels.shape)}, "
                          f"image_features {tuple(image_features.shape)} are not [B, T, d], [B, T], [B, N, d]")
    mask = answer_mask(labels, stop_ids)
    counts = mask.sum(-1)
    picked = torch.where(mask.unsqueeze(-1), inputs_embeds.float(), 0.0)  # a where, not a product: no 0 * inf
    text = picked.sum(1) / counts.clamp(min=1).unsqueeze(-1)
    visual = image_features.float().mean(1)
    with_image = torch.ones_like(counts, dtype=torch.bool) if has_image is None else has_image.to(counts.device).bool()
    valid = with_image & (counts > 0)
    used, skipped = int(valid.sum()), int((with_image & (counts == 0)).sum())
    if used == 0:
        return TermResult(image_features.new_zeros((), dtype=torch.float32), 0, skipped)
    cos = F.cosine_similarity(text[valid], visual[valid], dim=-1, eps=1e-8)
    return TermResult(-(cos / temperature).mean(), used, skipped)


def _usable(region: RegionTokens) -> bool:
    """Whether the local term uses a region: it covers a cell and its text has a token."""
    return bool(region.patches) and bool(region.text_ids)


def local_loss(image_features: torch.Tensor, embed_tokens: Callable[[torch.Tensor], torch.Tensor],
               regions: Sequence[Sequence[RegionTokens]] | None, temperature: float = 0.5) -> TermResult:
    """REMGCL's local term: mean over the batch's usable regions of ``-cos(o_r, u_r) / temperature``.

    ``image_features`` ``[B, N, d]``: projected visual tokens (N = rows * cols, row-major);
    ``embed_tokens``: token ids ``[M]`` -> ``[M, d]`` (the LLM's input embeddings; gradients reach
    them); ``regions``: one list of :class:`RegionTokens` per sample (None or empty lists: no
    regions). ``o_r``: mean embedding of the region's text ids; ``u_r``: mean visual token over its
    cells. One embedding call for the whole batch. Computed in float32."""
    B, N, d = image_features.shape
    if regions is None:
        return TermResult(image_features.new_zeros((), dtype=torch.float32), 0, 0)
    if len(regions) != B:
        raise RemgclError(f"local_loss: {len(regions)} region lists for a batch of {B} samples; pass one list per sample")
    text_ids, text_seg, cells, cell_seg = [], [], [], []
    n_used = skipped = 0
    for b, sample in enumerate(regions):
        for reg in sample or ():
            if not _usable(reg):
                skipped += 1
                continue
            if min(reg.patches) < 0 or max(reg.patches) >= N:
                raise RemgclError(f"sample {b}: a region covers patch {max(reg.patches)} (or < 0), but the sample has {N} "
                                  "image tokens; the regions were mapped with another grid than the tower's")
            r = n_used
            n_used += 1
            text_ids += reg.text_ids
            text_seg += [r] * len(reg.text_ids)
            cells += [b * N + p for p in reg.patches]
            cell_seg += [r] * len(reg.patches)
    if not n_used:
        return TermResult(image_features.new_zeros((), dtype=torch.float32), 0, skipped)
    R, device = n_used, image_features.device
    text_seg_t = torch.tensor(text_seg, device=device)
    cell_seg_t = torch.tensor(cell_seg, device=device)
    emb = embed_tokens(torch.tensor(text_ids, dtype=torch.long, device=device)).float()
    text = emb.new_zeros(R, d).index_add(0, text_seg_t, emb) / torch.bincount(text_seg_t, minlength=R).unsqueeze(-1)
    feats = image_features.float().reshape(B * N, d)[torch.tensor(cells, device=device)]
    visual = feats.new_zeros(R, d).index_add(0, cell_seg_t, feats) / torch.bincount(cell_seg_t, minlength=R).unsqueeze(-1)
    cos = F.cosine_similarity(text, visual, dim=-1, eps=1e-8)
    return TermResult(-(cos / temperature).mean(), R, skipped)


STATS = ("lm_loss", "global_loss", "local_loss", "global_samples", "global_skipped", "local_regions", "local_skipped")


@dataclass
class RemgclResult:
    loss: torch.Tensor  # L_LM + lambda_global * L_global + lambda_local * L_local: what to backpropagate
    lm: torch.Tensor
    global_term: TermResult
    local_term: TermResult
    # each term as it enters ``loss`` (before its lambda): the micro-batch mean, or its share of the step's
    # mean when the step's counts were given (:meth:`RemgclLoss.forward` ``items``)
    global_part: torch.Tensor | None = None
    local_part: torch.Tensor | None = None

    def __post_init__(self):
        self.global_part = self.global_term.loss if self.global_part is None else self.global_part
        self.local_part = self.local_term.loss if self.local_part is None else self.local_part

    def log(self) -> dict:
        """Floats for the training log."""
        g, l_ = self.global_term, self.local_term
        return {"loss": float(self.loss.detach()), "lm_loss": float(self.lm.detach()), "global_loss": float(g.loss.detach()),
                "local_loss": float(l_.loss.detach()), "global_samples": g.used, "global_skipped": g.skipped,
                "local_regions": l_.used, "local_skipped": l_.skipped}

    def stats(self) -> torch.Tensor:
        """``[len(STATS)]`` float32, detached, on the loss's device (no host sync): the LM loss and the two
        parts as they enter the loss, then the counts; a trainer sums these over micro-batches."""
        g, l_ = self.global_term, self.local_term
        parts = torch.stack([self.lm.detach().float(), self.global_part.detach().float().to(self.lm.device),
                             self.local_part.detach().float().to(self.lm.device)])
        counts = torch.tensor([g.used, g.skipped, l_.used, l_.skipped], dtype=torch.float32, device=self.lm.device)
        return torch.cat([parts, counts])


def _share(term: TermResult, total, name: str) -> torch.Tensor:
    """The term as a share of the step's mean: this micro-batch's sum over ``total`` items (None: its own mean)."""
    if total is None or term.used == 0:
        return term.loss
    total = int(total)
    if term.used > total:
        raise RemgclError(f"the {name} term averages {term.used} items in this micro-batch but the step counted only "
                          f"{total}; the counts (RemgclLoss.count) and the terms disagree")
    return term.loss * (term.used / total)


class RemgclLoss(nn.Module):
    """``L_LM + lambda_global * L_global + lambda_local * L_local`` for one micro-batch.

    ``stop_ids``: :func:`stop_word_ids` of ``settings.stop_words`` with the run's tokenizer (built
    once, by :meth:`from_tokenizer`). A term whose lambda is 0 is not computed (reported as 0).

    Gradient accumulation: the LM loss of a training step is normalised over the whole optimiser step
    (``num_items_in_batch``: every micro-batch's loss is its token sum over the step's token count), so the
    terms are too when :meth:`forward` gets ``items``, the step's counts of :meth:`count` summed over its
    micro-batches (and ranks, wherever ``num_items_in_batch`` is summed over ranks): each term is then this
    micro-batch's sum over the step's count, and the step's accumulated gradient is that of one big batch,
    whatever the split."""

    def __init__(self, settings: RemgclSettings, stop_ids: Sequence[Sequence[int]]):
        super().__init__()
        self.settings = settings
        self.stop_ids = tuple(tuple(int(i) for i in s) for s in stop_ids)

    @classmethod
    def from_tokenizer(cls, settings: RemgclSettings, tokenizer) -> RemgclLoss:
        return cls(settings, stop_word_ids(tokenizer, settings.stop_words))

    def count(self, labels: torch.Tensor, regions: Sequence[Sequence[RegionTokens]] | None = None,
              has_image: torch.Tensor | None = None) -> tuple[int, int]:
        """``(samples, regions)`` that the two terms average over in a micro-batch (0 for a term whose lambda
        is 0), from the collated ``labels`` ``[B, L]`` (the image placeholder's label is IGNORE_INDEX, so they
        give the same answer mask as the spliced labels), ``regions`` and ``has_image`` ``[B]``."""
        s = self.settings
        n_samples = n_regions = 0
        if s.lambda_global > 0:
            content = answer_mask(labels, self.stop_ids).any(-1)
            if has_image is not None:
                content &= has_image.to(content.device).bool()
            n_samples = int(content.sum())
        if s.lambda_local > 0 and regions is not None:
            n_regions = sum(_usable(r) for sample in regions for r in sample or ())
        return n_samples, n_regions

    def forward(self, lm_loss: torch.Tensor, *, inputs_embeds: torch.Tensor, labels: torch.Tensor,
                image_features: torch.Tensor, embed_tokens: Callable[[torch.Tensor], torch.Tensor],
                regions: Sequence[Sequence[RegionTokens]] | None = None,
                has_image: torch.Tensor | None = None, items: Sequence[int] | None = None) -> RemgclResult:
        """``items``: ``(samples, regions)`` of the whole optimiser step (see the class), or None: each term is
        this micro-batch's mean."""
        s = self.settings
        zero = TermResult(image_features.new_zeros((), dtype=torch.float32), 0, 0)
        g = global_loss(inputs_embeds, labels, image_features, self.stop_ids, s.temperature_global, has_image) \
            if s.lambda_global > 0 else zero
        l_ = local_loss(image_features, embed_tokens, regions, s.temperature_local) if s.lambda_local > 0 else zero
        n_samples, n_regions = (None, None) if items is None else items
        g_part, l_part = _share(g, n_samples, "global"), _share(l_, n_regions, "local")
        total = lm_loss + s.lambda_global * g_part.to(lm_loss.dtype) + s.lambda_local * l_part.to(lm_loss.dtype)
        return RemgclResult(total, lm_loss, g, l_, g_part, l_part)
