"""The LLaVA model: vision tower -> connector -> LLM, with image features spliced in place of the
``<image>`` sentinel (``IMAGE_TOKEN_INDEX``) of ``input_ids``. The LLM is a decoder (Llama, Qwen2: a
causal LM over one sequence) or an encoder-decoder (Flan-T5, as CLIP-FlanT5: the image and the prompt go
to the encoder, the answer only to the decoder); which one is read from its config
(``is_encoder_decoder``), never from a name.

The layout mirrors transformers' Llava (``vision_tower``, ``multi_modal_projector``,
``language_model``) so that the common cases export to ``LlavaForConditionalGeneration``
(:mod:`sailflow.llava.export`). Splicing follows LLaVA's ``prepare_inputs_labels_for_multimodal``:

1. every sample carries one image (a zero image for text-only samples, whose features are spliced
   with zero length but stay in the autograd graph, so the connector always gets a gradient: ZeRO and
   DDP need every parameter used on every rank);
2. text pieces are embedded, the ``n_image_tokens`` image features replace the sentinel, labels of the
   image positions are ``IGNORE_INDEX``;
3. each sequence is cut to ``max_length`` (the dataset already truncates; this is the guard);
4. sequences are padded again with zero embeddings: on the right for training, on the left for
   generation (``padding_side``), with the attention mask and position ids rebuilt.

The loss is the LLM's own causal-LM loss: shift by one, mean over the supervised tokens of the
batch, or of the whole optimiser step when the trainer passes ``num_items_in_batch`` (transformers'
gradient-accumulation fix), so N GPUs x K accumulation steps train like one big batch.

Encoder-decoder (T5): ``input_ids`` are the encoder's ids and are spliced as above (right padding, the
attention mask marks the text and image positions; T5's position bias is relative, so no position ids);
``labels`` are a separate decoder sequence (the answer + ``</s>``, IGNORE_INDEX only as padding), left
untouched. The decoder reads ``labels`` shifted right behind T5's decoder start token (IGNORE_INDEX ->
pad), with ``decoder_attention_mask = labels != IGNORE_INDEX`` as CLIP-FlanT5's collator passes it. The
loss is cross-entropy over every label that is not IGNORE_INDEX (nothing is shifted: the decoder input
is), computed here rather than by T5 (whose loss is always a per-batch mean), so ``num_items_in_batch``
gives the same one-big-batch mean as for a decoder. Generation is T5's own ``generate`` with the spliced
embeddings as the encoder's ``inputs_embeds``.

Auxiliary loss (decoders): with ``remgcl`` set (a :class:`~sailflow.llava.remgcl.RemgclLoss`, the trainer sets
it), the training loss is REMGCL's ``L_LM + lambda_g L_global + lambda_l L_local`` on the image features the
splice used (computed once), the spliced embeddings and labels, and the batch's ``ocr_regions``; with the
step's ``remgcl_items`` the terms are normalised over the optimiser step as the LM loss is. The last
micro-batch's terms are kept in ``remgcl_stats`` (detached) for the trainer's log.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from sailflow.llava.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder input ids of an encoder-decoder from its labels ``[B, T]``: ``[start, labels[:, :-1]]`` with
    IGNORE_INDEX replaced by the pad id (what T5 does with ``labels`` alone)."""
    out = labels.new_full(labels.shape, pad_token_id)
    out[:, 0] = decoder_start_token_id
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == IGNORE_INDEX, pad_token_id)


@contextlib.contextmanager
def greedy_decoding(lm, *, max_new_tokens: int, stop_token_ids: list[int], pad_token_id: int):
    """``with greedy_decoding(lm, ...) as config: lm.generate(..., generation_config=config)``: LLaVA's
    protocol (greedy: no sampling, one beam, and nothing else), whatever the LLM ships in its
    ``generation_config.json``. transformers fills every setting a call leaves unset from the model's
    own config, so Qwen2-Instruct's ``repetition_penalty`` (1.05 to 1.1) would otherwise reweight every
    "greedy" step; for the block the model's config is a plain one that keeps only its special tokens
    (BOS, T5's decoder start token)."""
    from transformers import GenerationConfig

    own = lm.generation_config
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=list(stop_token_ids),
                              pad_token_id=pad_token_id, bos_token_id=own.bos_token_id,
                              decoder_start_token_id=own.decoder_start_token_id)
    lm.generation_config = config
    try:
        yield config
    finally:
        lm.generation_config = own

class LlavaModel(nn.Module):
    def __init__(self, vision_tower: nn.Module, multi_modal_projector: nn.Module, language_model: nn.Module, *,
                 n_image_tokens: int, max_length: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.multi_modal_projector = multi_modal_projector
        self.language_model = language_model
        self.n_image_tokens = int(n_image_tokens)
        self.max_length = int(max_length)
        self.config = language_model.config  # what transformers' Trainer and peft look at
        # T5 (Flan-T5) and other seq2seq LLMs: image + prompt to the encoder, the answer to the decoder
        self.is_encoder_decoder = bool(getattr(language_model.config, "is_encoder_decoder", False))
        self.remgcl = None  # an auxiliary loss (RemgclLoss), set by the trainer
        self.remgcl_stats = None

    # ---- parts ---------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, n_image_tokens, d_llm]``."""
        feats = self.vision_tower(pixel_values)
        proj_dtype = next(self.multi_modal_projector.parameters()).dtype
        return self.multi_modal_projector(feats.to(proj_dtype))

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
                pixel_values: torch.Tensor | None, has_image: torch.Tensor | None = None, padding_side: str = "right",
                image_features: torch.Tensor | None = None):
        """Splice image features into the text embeddings. Returns ``(inputs_embeds [B, T, d],
        attention_mask [B, T], labels [B, T] or None, position_ids [B, T])``. ``image_features``
        (``[B, n_image_tokens, d_llm]``) replaces ``pixel_values`` when the images are already encoded
        (VQAScore: one image, many texts)."""
        B = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        feats = image_features
        if feats is None and pixel_values is not None:
            feats = self.image_features(pixel_values)
        embeds, labs = [], []
        for b in range(B):
            ids = input_ids[b][attention_mask[b]]
            lab = labels[b][attention_mask[b]] if labels is not None else None
            where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(where) > 1:
                raise ValueError(f"sample {b} has {len(where)} image placeholders; one image per sample is supported")
            text = self.embed_tokens(ids.clamp(min=0))  # the sentinel's row is never used
            if not where:
                e = text if feats is None else torch.cat([text, feats[b][:0].to(text.dtype)])  # keeps the graph
                l_ = lab
            else:
                if feats is None:
                    raise ValueError("input_ids hold an image placeholder but no pixel_values were given")
                k = where[0]
                img = feats[b].to(text.dtype)
                e = torch.cat([text[:k], img, text[k + 1:]])
                if lab is not None:
                    l_ = torch.cat([lab[:k], lab.new_full((img.shape[0],), IGNORE_INDEX), lab[k + 1:]])
            embeds.append(e[: self.max_length])
            labs.append(l_[: self.max_length] if lab is not None else None)
        T = max(e.shape[0] for e in embeds)
        d = embeds[0].shape[-1]
        out = embeds[0].new_zeros(B, T, d)
        mask = torch.zeros(B, T, dtype=torch.bool, device=out.device)
        pos = torch.zeros(B, T, dtype=torch.long, device=out.device)
        lab_out = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=out.device) if labels is not None else None
        for b, e in enumerate(embeds):
            n = e.shape[0]
            sl = slice(T - n, T) if padding_side == "left" else slice(0, n)
            out[b, sl] = e
            mask[b, sl] = True
            pos[b, sl] = torch.arange(n, device=out.device)
            if lab_out is not None:
                lab_out[b, sl] = labs[b]
        return out, mask, lab_out, pos

    # ---- training --------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, has_image: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None, ocr_regions=None, remgcl_items: torch.Tensor | None = None,
                **kwargs):
        """A decoder: ``input_ids`` / ``labels`` ``[B, L]`` aligned. An encoder-decoder: ``input_ids`` ``[B, L]``
        the encoder's, ``labels`` ``[B, T]`` the decoder's (or ``decoder_input_ids`` without a loss).
        ``image_features`` replaces ``pixel_values`` when the images are already encoded. With ``remgcl`` set
        and ``labels`` given: ``ocr_regions`` (one list of RegionTokens per sample) and ``remgcl_items``
        (``[2]``: the optimiser step's samples and regions, :meth:`RemgclLoss.count` summed) feed its terms."""
        if self.is_encoder_decoder:
            if self.remgcl is not None:
                raise ValueError("the REMGCL loss is implemented for decoder LLMs; this LLM is an encoder-decoder (T5)")
            return self._seq2seq_forward(input_ids, attention_mask, labels, pixel_values, image_features, **kwargs)
        feats = image_features
        if feats is None and pixel_values is not None:
            feats = self.image_features(pixel_values)
        embeds, mask, labels, pos = self.prepare(input_ids, attention_mask, labels, None, has_image, image_features=feats)
        extra = {k: v for k, v in kwargs.items() if k == "num_items_in_batch"}
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, labels=labels, use_cache=False, **extra)
        if self.remgcl is not None and labels is not None and feats is not None:
            items = None if remgcl_items is None else [int(n) for n in remgcl_items.tolist()]
            res = self.remgcl(out.loss, inputs_embeds=embeds, labels=labels, image_features=feats, embed_tokens=self.embed_tokens,
                              regions=ocr_regions, has_image=has_image, items=items)
            out.loss = res.loss
            self.remgcl_stats = res.stats()
        return out

    def _seq2seq_forward(self, input_ids, attention_mask, labels, pixel_values, image_features, *, decoder_input_ids=None,
                         num_items_in_batch=None, **_):
        from transformers.modeling_outputs import Seq2SeqLMOutput

        embeds, mask, _, _ = self.prepare(input_ids, attention_mask, None, pixel_values, image_features=image_features)
        cfg = self.language_model.config
        decoder_mask = None
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("an encoder-decoder LLM needs labels (teacher forcing) or decoder_input_ids")
            decoder_input_ids = shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
            decoder_mask = labels != IGNORE_INDEX
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                                  decoder_attention_mask=decoder_mask, use_cache=False)
        loss = None
        if labels is not None:
            logits = out.logits
            total = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                                                ignore_index=IGNORE_INDEX, reduction="sum")
            n = num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE_INDEX).sum()
            loss = total / torch.as_tensor(n, device=total.device).to(total.dtype)
        return Seq2SeqLMOutput(loss=loss, logits=out.logits, encoder_last_hidden_state=out.encoder_last_hidden_state)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1, offload: bool = False):
        """Checkpoint the LLM's layers (non-reentrant: frozen embeddings under LoRA keep their gradient path).
        The Trainer calls it (``activation_checkpointing``, the stage's ``gradient_checkpointing``) with
        transformers' arguments, passed on to the LLM's own method."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        self.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers,
                                                            offload=offload)
        self.language_model.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        """transformers' older name for :meth:`activation_checkpointing_enable` (its Trainer falls back to it)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ---- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], pixel_values: torch.Tensor | None, *, max_new_tokens: int,
                 stop_token_ids: list[int], pad_token_id: int) -> list[list[int]]:
        """Greedy answers (new token ids only, stop token excluded) for a batch of prompts (token id lists
        with the image sentinel); left padding, so batched answers equal one-at-a-time answers. An
        encoder-decoder: the prompts are the encoder's, right-padded as in training (T5's position bias is
        relative and padded keys are masked, so any padding gives the same encoder states); the decoder
        starts from T5's decoder start token, dropped from the answers."""
        device = next(self.language_model.parameters()).device
        L = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), L), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):  # right-padded here: prepare() strips padding, then pads on the left
            ids[b, : len(p)] = torch.tensor(p, device=device)
            mask[b, : len(p)] = True
        if pixel_values is not None:
            pixel_values = pixel_values.to(device)
        side = "right" if self.is_encoder_decoder else "left"
        embeds, attn, _, pos = self.prepare(ids, mask, None, pixel_values, padding_side=side)
        with greedy_decoding(self.language_model, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids,
                             pad_token_id=pad_token_id) as config:
            out = self.language_model.generate(inputs_embeds=embeds, attention_mask=attn.long(), generation_config=config)
        answers = []
        for row in out.tolist():  # with inputs_embeds, a decoder's generate returns the new tokens only
            if self.is_encoder_decoder:
                row = row[1:]  # the decoder start token
            cut = next((i for i, t in enumerate(row) if t in stop_token_ids), len(row))
            answers.append(row[:cut])
        return answers
