"""Frozen text feature extractors behind one interface: ``TextBackbone.encode(list[str]) -> [B, D]``.

Pooling for HF encoders (``family: hf``) on ``last_hidden_state``:
    mean   mean over non-padding tokens (sentence-transformers)
    cls    the first token (GTE-large: ``BOS``)
    last   the last non-padding token, for left or right padding (gte-Qwen2 style)
``clip``: CLIPTextModel ``pooler_output``; ``open_clip``: ``encode_text``; ``nv_embed``: the
model's own ``encode(texts, instruction="", max_length=...)`` (NV-Embed-v2, remote code).
No normalisation: SAIL stores raw embeddings (the alignment head starts with a LayerNorm).
"""

from __future__ import annotations

import torch

from sailflow.backbones.hub import loading
from sailflow.backbones.spec import POOLINGS, BackboneError, check_spec, hub_kwargs, resolve_path


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden [B, T, D]`` with ``mask [B, T]`` (1 = token) into ``[B, D]``."""
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        if bool(mask[:, -1].all()):  # left padding: every sequence ends at the last position
            return hidden[:, -1]
        idx = mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    raise BackboneError(f"unknown text pooling {pooling!r}; choose one of {POOLINGS['text', 'hf']}")


class TextBackbone(torch.nn.Module):
    def __init__(self, name: str, spec: dict, model, tokenizer, device):
        super().__init__()
        self.name, self.spec, self.model, self.tokenizer = name, spec, model, tokenizer
        self.family = spec["family"]
        self.pooling = spec["pooling"]
        self.max_length = int(spec.get("max_length", 512))
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        if self.family == "nv_embed":
            return torch.as_tensor(self.model.encode(texts, instruction="", max_length=self.max_length))
        if self.family == "open_clip":
            return self.model.encode_text(self.tokenizer(texts).to(self.device))
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        out = self.model(**enc)
        if self.family == "clip":
            return out.pooler_output
        return pool(out.last_hidden_state, enc["attention_mask"], self.pooling)


def load_text(name: str, spec: dict, device: str | torch.device = "cpu") -> TextBackbone:
    """Load the text backbone ``name`` described by ``spec`` (a ``backbones:`` config entry, with
    its ``pooling`` filled in by the config schema)."""
    spec = {**spec, "kind": spec.get("kind", "text")}
    check_spec(name, spec)
    family, kw = spec["family"], hub_kwargs(spec)
    with loading(name, spec):  # a hub model missing from the offline cache: one clear error
        path = resolve_path(spec["path"], spec.get("revision"))
        if family == "open_clip":
            import open_clip

            model = open_clip.create_model(path, pretrained=spec.get("pretrained"))
            tokenizer = open_clip.get_tokenizer(path)
        else:
            from transformers import AutoModel, AutoTokenizer, CLIPTextModel

            cls = CLIPTextModel if family == "clip" else AutoModel
            model = cls.from_pretrained(path, use_safetensors=True, **kw)
            tokenizer = AutoTokenizer.from_pretrained(path, **kw)
            if family == "nv_embed" and not hasattr(model, "encode"):
                raise BackboneError(f"backbones.{name}: family nv_embed needs a model with its own encode() (trust_remote_code: true)")
    model.eval().requires_grad_(False).to(device)
    return TextBackbone(name, spec, model, tokenizer, device)
