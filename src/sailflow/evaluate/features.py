"""Backbone features of evaluation sets, and a model that applies an alignment head to them.

Evaluating a run is backbone (frozen, expensive) then head (small). The backbone part depends on
the task and the backbone only, so it is computed once per (task, backbone) and shared by every run
and every retrained head: ``results/eval/{task}/image/{vision}.safetensors`` and
``.../text/{text}.safetensors``. Rows follow ``tasks.images_of`` / ``tasks.texts_of``; the file
records a hash of its keys (image paths or texts), so features are never looked up by a stale order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sailflow.embeddings import EmbeddingMismatch, open_embeddings, save_embeddings


def keys_digest(keys: list) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(str(k).encode("utf-8") + b"\0")
    return h.hexdigest()


def save_features(path: str | Path, features: torch.Tensor, keys: list, meta: dict) -> None:
    save_embeddings(path, features, np.arange(len(keys)), {**meta, "keys_digest": keys_digest(keys)})


def load_features(path: str | Path, keys: list) -> torch.Tensor:
    """The features in ``path``, checked to be those of ``keys`` in this order."""
    f = open_embeddings(path)
    if f.count != len(keys) or f.meta.get("keys_digest") != keys_digest(keys):
        raise EmbeddingMismatch(f"{path}: features of another version of this evaluation set ({f.count} rows, the set now has "
                                f"{len(keys)}); its data changed since they were computed: delete the file and rerun")
    return f.rows(slice(None))


class HeadOverFeatures:
    """``encode_image(paths)`` / ``encode_text(texts)`` = normalised head output over stored features."""

    def __init__(self, head, image_keys: list, image_features: torch.Tensor, text_keys: list, text_features: torch.Tensor,
                 device: str = "cpu", batch_size: int = 4096):
        self.head = head.to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size
        self._image = ({str(k): n for n, k in enumerate(image_keys)}, image_features)
        self._text = ({k: n for n, k in enumerate(text_keys)}, text_features)

    @torch.no_grad()
    def _apply(self, table, keys, encode) -> torch.Tensor:
        index, feats = table
        try:
            rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
        except KeyError as e:
            raise KeyError(f"no stored feature for {e.args[0]!r}") from None
        out = [F.normalize(encode(feats[rows[i : i + self.batch_size]].to(self.device).float()), dim=-1).cpu()
               for i in range(0, len(rows), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.head.config["dim"])

    def encode_image(self, paths: list) -> torch.Tensor:
        return self._apply(self._image, [str(p) for p in paths], self.head.encode_image)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self._apply(self._text, list(texts), self.head.encode_text)
