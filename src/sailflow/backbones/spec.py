"""Backbone specs from config: where a model lives, what it is, how its output is pooled."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

# The poolings each (kind, family) can produce. The default of each lives in the config schema
# (workflow/schemas/config.schema.yaml), which fills it in: a spec reaching the library names its pooling.
POOLINGS = {
    ("vision", "dinov2"): ("concat", "cls", "patch", "tokens", "tokens_cls"),
    ("vision", "clip"): ("pooler", "tokens"),
    ("vision", "open_clip"): ("projected", "tokens"),
    ("text", "hf"): ("mean", "cls", "last"),
    ("text", "clip"): ("pooler",),
    ("text", "open_clip"): ("projected",),
    ("text", "nv_embed"): ("latent",),
}
VISION_FAMILIES = {f for k, f in POOLINGS if k == "vision"}
TEXT_FAMILIES = {f for k, f in POOLINGS if k == "text"}


class BackboneError(ValueError):
    pass


def resolve_path(path: str, revision: str | None = None) -> str:
    """A hub id, a local folder, ``package:<module>`` (a model shipped inside a pip package, via the
    module's ``get_model_path()``), or an open_clip name (``hf-hub:org/repo``, ``local-dir:...``).

    open_clip cannot pin a hub revision itself: an ``hf-hub:`` name with a ``revision`` is fetched
    at that revision with huggingface_hub and loaded as ``local-dir:<snapshot>``."""
    if path.startswith("package:"):
        module = importlib.import_module(path.split(":", 1)[1])
        return str(module.get_model_path())
    if path.startswith("hf-hub:") and revision:
        from huggingface_hub import snapshot_download

        return "local-dir:" + snapshot_download(path.removeprefix("hf-hub:"), revision=revision)
    return path


def hub_kwargs(spec: dict) -> dict:
    """``from_pretrained`` keywords of a spec: the pinned revision and whether remote code may run."""
    kw = {"trust_remote_code": bool(spec.get("trust_remote_code", False))}
    if spec.get("revision"):
        kw["revision"] = spec["revision"]
    return kw


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
    """Refuse a spec whose kind, family or pooling the loaders cannot honour (the config schema
    checks the same; this guards specs built outside the workflow)."""
    kind, family = spec.get("kind"), spec.get("family")
    families = VISION_FAMILIES if kind == "vision" else TEXT_FAMILIES if kind == "text" else None
    if families is None:
        raise BackboneError(f"backbones.{name}.kind must be 'vision' or 'text', not {kind!r}")
    if family not in families:
        raise BackboneError(f"backbones.{name}.family {family!r} is not a {kind} family; choose one of {sorted(families)}")
    allowed = POOLINGS[(kind, family)]
    if "pooling" not in spec:
        raise BackboneError(f"backbones.{name}: no pooling given; a {kind} {family} backbone has {list(allowed)} "
                            "(the workflow's config schema fills in the default)")
    if spec["pooling"] not in allowed:
        raise BackboneError(f"backbones.{name}.pooling {spec['pooling']!r} is not available for a {kind} {family} backbone; "
                            f"choose one of {list(allowed)}")
    if kind == "vision" and family in ("clip", "open_clip") and spec["pooling"] == "tokens" and spec.get("layer") is None:
        raise BackboneError(f"backbones.{name}: `tokens` of a {family} tower need a `layer` (LLaVA-1.5: -2; the config schema fills it in)")
