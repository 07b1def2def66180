"""Frozen vision and text backbones, configured by name under ``backbones:`` in the config.

Imported lazily: the workflow's planning code reads :mod:`sailflow.backbones.hub` and
:mod:`sailflow.backbones.spec` without paying for torch and transformers."""

from importlib import import_module

_EXPORTS = {
    "BackboneError": "spec", "check_spec": "spec", "fingerprint": "spec", "resolve_path": "spec",
    "TextBackbone": "text", "load_text": "text", "VisionBackbone": "vision", "load_vision": "vision",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"sailflow.backbones.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sailflow.backbones' has no attribute {name!r}")
