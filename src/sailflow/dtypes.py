"""The one map from the config's dtype names (``fp32``, ``fp16``, ``bf16``) to torch dtypes."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting; None for fp32 (no autocast)."""
    return None if name == "fp32" else DTYPES[name]
