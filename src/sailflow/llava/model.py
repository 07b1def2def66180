"""The LLaVA model: vision tower -> connector -> decoder LLM, with image features spliced in place of
the ``<image>`` sentinel (``IMAGE_TOKEN_INDEX``) of ``input_ids``.

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
"""

from __future__ import annotations

import torch
from torch import nn

from sailflow.llava.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX


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
                pixel_values: torch.Tensor | None = None, has_image: torch.Tensor | None = None, **kwargs):
        embeds, mask, labels, pos = self.prepare(input_ids, attention_mask, labels, pixel_values, has_image)
        extra = {k: v for k, v in kwargs.items() if k == "num_items_in_batch"}
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, labels=labels, use_cache=False, **extra)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Checkpoint the LLM's layers (non-reentrant: frozen embeddings under LoRA keep their gradient path)."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.language_model.enable_input_require_grads()

    # ---- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], pixel_values: torch.Tensor | None, *, max_new_tokens: int,
                 stop_token_ids: list[int], pad_token_id: int) -> list[list[int]]:
        """Greedy answers (new token ids only, stop token excluded) for a batch of prompts (token id lists
        with the image sentinel); left padding, so batched answers equal one-at-a-time answers."""
        device = next(self.language_model.parameters()).device
        L = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), L), pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool, device=device)
        for b, p in enumerate(prompts):  # right-padded here: prepare() strips padding, then pads on the left
            ids[b, : len(p)] = torch.tensor(p, device=device)
            mask[b, : len(p)] = True
        if pixel_values is not None:
            pixel_values = pixel_values.to(device)
        embeds, attn, _, pos = self.prepare(ids, mask, None, pixel_values, padding_side="left")
        out = self.language_model.generate(inputs_embeds=embeds, attention_mask=attn.long(), max_new_tokens=max_new_tokens,
                                           do_sample=False, num_beams=1, eos_token_id=list(stop_token_ids), pad_token_id=pad_token_id)
        answers = []
        for row in out.tolist():  # with inputs_embeds, generate returns the new tokens only
            cut = next((i for i, t in enumerate(row) if t in stop_token_ids), len(row))
            answers.append(row[:cut])
        return answers
