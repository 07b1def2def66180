"""Frozen vision feature extractors behind one interface.

``VisionBackbone.preprocess(PIL RGB image) -> [3, H, W]`` runs in DataLoader workers and is
exactly the backbone's own processor; ``VisionBackbone(pixel_values [B, 3, H, W])`` returns
``[B, D]`` (pooled) or ``[B, N, D]`` (``tokens`` pooling, for LLaVA).

Pooling for DINOv2 (on ``last_hidden_state``, i.e. after the final LayerNorm, or on the output of
block ``layer`` when the spec sets one; register tokens, if any, are skipped):
    cls         H[:, 0]                                  D = hidden
    patch       mean of the patch tokens                 D = hidden
    concat      [cls ; mean patch] (SAIL's default)      D = 2 * hidden
    tokens      the patch tokens                         [N, hidden]
    tokens_cls  each patch token after the CLS token     [N, 2 * hidden]
CLIP vision: ``pooler`` (post-LN CLS, no projection) or ``tokens``: the patch tokens (CLS dropped)
of ``hidden_states[layer]`` (LLaVA-1.5: layer -2, the penultimate block's output, no final norm).
open_clip: ``projected`` (``encode_image``) or ``tokens``: the patch tokens of the same block of its
visual transformer. ``layer`` counts as HF's ``hidden_states`` do: 0 is the embeddings, i the output
of block i, -1 the last block.

``VisionBackbone(x)`` runs without gradients (frozen encoding); ``features(x)`` is the same forward
with autograd, for towers that train (LLaVA stage 2 with an unlocked tower).
"""

from __future__ import annotations

from functools import partial

import torch

from sailflow.backbones.hub import loading
from sailflow.backbones.spec import BackboneError, check_spec, hub_kwargs, resolve_path


def _hf_preprocess(processor, img):
    return processor(images=img, return_tensors="pt")["pixel_values"][0]


class VisionBackbone(torch.nn.Module):
    def __init__(self, name: str, spec: dict, model: torch.nn.Module, preprocess, forward):
        super().__init__()
        self.name, self.spec, self.model = name, spec, model
        self.preprocess = preprocess
        self._forward = forward
        self.pooling = spec["pooling"]

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._forward(self.model, pixel_values)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._forward(self.model, pixel_values)


def _dinov2_forward(pooling: str, n_registers: int, layer, model, x):
    if layer is None:
        h = model(pixel_values=x).last_hidden_state
    else:
        h = model(pixel_values=x, output_hidden_states=True).hidden_states[layer]
    cls, patches = h[:, 0], h[:, 1 + n_registers :]
    if pooling == "cls":
        return cls
    if pooling == "patch":
        return patches.mean(dim=1)
    if pooling == "concat":
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)
    if pooling == "tokens":
        return patches
    return torch.cat([cls.unsqueeze(1).expand_as(patches), patches], dim=-1)  # tokens_cls


def _clip_forward(pooling: str, layer, model, x):
    if pooling == "tokens":
        return model(pixel_values=x, output_hidden_states=True).hidden_states[layer][:, 1:]
    return model(pixel_values=x).pooler_output


def _open_clip_forward(pooling: str, layer, model, x):
    if pooling == "tokens":
        n = len(model.visual.transformer.resblocks)
        block = n + layer if layer < 0 else layer - 1  # hidden_states[layer] is the output of this block
        if not 0 <= block < n:
            raise BackboneError(f"layer {layer} is outside the {n} blocks of this open_clip tower")
        out = model.visual.forward_intermediates(x, indices=[block], intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][0]  # class token split off by open_clip
    return model.encode_image(x)


def load_vision(name: str, spec: dict, device: str | torch.device = "cpu") -> VisionBackbone:
    """Load the vision backbone ``name`` described by ``spec`` (a ``backbones:`` config entry, with
    its ``pooling`` filled in by the config schema)."""
    spec = {**spec, "kind": spec.get("kind", "vision")}
    check_spec(name, spec)
    family, kw = spec["family"], hub_kwargs(spec)
    with loading(name, spec):  # a hub model missing from the offline cache: one clear error
        path = resolve_path(spec["path"], spec.get("revision"))
        if family == "dinov2":
            from transformers import AutoImageProcessor, AutoModel

            model = AutoModel.from_pretrained(path, attn_implementation="sdpa", use_safetensors=True, **kw)
            processor = AutoImageProcessor.from_pretrained(path, **kw)
            n_reg = int(getattr(model.config, "num_register_tokens", 0) or 0)
            forward = partial(_dinov2_forward, spec["pooling"], n_reg, spec.get("layer"))
            preprocess = partial(_hf_preprocess, processor)
        elif family == "clip":
            from transformers import AutoImageProcessor, CLIPVisionModel

            model = CLIPVisionModel.from_pretrained(path, attn_implementation="sdpa", use_safetensors=True, **kw)
            preprocess = partial(_hf_preprocess, AutoImageProcessor.from_pretrained(path, **kw))
            forward = partial(_clip_forward, spec["pooling"], spec.get("layer"))
        elif family == "open_clip":
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(path, pretrained=spec.get("pretrained"))
            forward = partial(_open_clip_forward, spec["pooling"], spec.get("layer"))
        else:
            raise BackboneError(f"backbones.{name}: unknown vision family {family!r}")
    model.eval().requires_grad_(False).to(device)
    return VisionBackbone(name, spec, model, preprocess, forward)
