"""Backbone specs from config: where a model lives, what it is, how its output is pooled."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VISION_FAMILIES = {"dinov2", "clip", "open_clip"}
TEXT_FAMILIES = {"hf", "clip", "open_clip", "nv_embed"}


class BackboneError(ValueError):
    pass


def resolve_path(path: str) -> str:
    """A hub id, a local folder, ``package:<module>`` (a model shipped inside a pip package, via the
    module's ``get_model_path()``), or an open_clip name (``hf-hub:org/repo``, ``local-dir:...``)."""
    if path.startswith("package:"):
        module = importlib.import_module(path.split(":", 1)[1])
        return str(module.get_model_path())
    return path


def fingerprint(name: str, spec: dict) -> str:
    """A short hash of the spec and, for local models, of their files' names, sizes and config."""
    h = hashlib.sha256(json.dumps({"name": name, **spec}, sort_keys=True).encode())
    local = Path(resolve_path(spec["path"]).removeprefix("local-dir:"))
    if local.is_dir():
        for f in sorted(local.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(local)}:{f.stat().st_size}".encode())
                if f.suffix == ".json":
                    h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_spec(name: str, spec: dict) -> None:
    kind, family = spec.get("kind"), spec.get("family")
    families = VISION_FAMILIES if kind == "vision" else TEXT_FAMILIES if kind == "text" else None
    if families is None:
        raise BackboneError(f"backbones.{name}.kind must be 'vision' or 'text', not {kind!r}")
    if family not in families:
        raise BackboneError(f"backbones.{name}.family {family!r} is not a {kind} family; choose one of {sorted(families)}")
