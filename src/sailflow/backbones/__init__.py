"""Frozen vision and text backbones, configured by name under ``backbones:`` in the config."""

from sailflow.backbones.spec import DTYPES, BackboneError, check_spec, fingerprint, resolve_path
from sailflow.backbones.text import TextBackbone, load_text
from sailflow.backbones.vision import VisionBackbone, load_vision

__all__ = [
    "DTYPES", "BackboneError", "TextBackbone", "VisionBackbone", "check_spec", "fingerprint",
    "load_text", "load_vision", "resolve_path",
]
