"""Decoding stored image bytes into RGB, and the checks the filter stage applies.

The filter stage and the encode stage both go through :func:`decode_rgb`, so the pixels that were
validated are exactly the pixels that get encoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Our own max_pixels check runs on the header before any decoding; PIL's guard is lifted so that
# it does not fire with its own limit and message first.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageLimits:
    """Keep an image only if ``min(w, h) >= min_side``, ``w * h <= max_pixels`` and
    ``max(w, h) / min(w, h) <= max_aspect_ratio``."""

    min_side: int = 64
    max_pixels: int = 64_000_000
    max_aspect_ratio: float = 4.0


class ImageRejected(Exception):
    """An image is dropped; ``reason`` is the manifest key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB. Transparency is composited onto white (as img2dataset does);
    16- and 32-bit integer greyscale is scaled to 8 bit instead of clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img)
        if mode.startswith("I;16"):
            a8 = (a.astype(np.uint32) >> 8).astype(np.uint8)
        elif mode == "I":
            hi = 65535 if a.max(initial=0) > 255 else 255
            a8 = (np.clip(a, 0, hi).astype(np.float64) * (255.0 / hi) + 0.5).astype(np.uint8)
        else:
            a8 = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _decode_error(e: Exception) -> ImageRejected:
    reason = "truncated" if "truncated" in str(e).lower() else "undecodable"
    return ImageRejected(reason, f"{type(e).__name__}: {e}")


def decode_rgb_as_stored(data: bytes) -> Image.Image:
    """``data`` as LLaVA's code reads an image (``Image.open(f).convert("RGB")``): the stored pixels, no
    EXIF rotation, an alpha channel dropped (not put on white), other modes as PIL converts them. LLaVA
    training and evaluation read images this way, so a model sees the pixels the reference's would (phone
    photos, as in VizWiz and TextVQA, often carry an EXIF rotation) and OCR boxes, which Tesseract
    measures on the stored pixels, fall where their text is. :class:`ImageRejected` when it cannot decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            img.load()
            return img.convert("RGB")
    except Exception as e:
        raise _decode_error(e) from None


def decode_rgb(data: bytes, limits: ImageLimits | None = None) -> Image.Image:
    """Fully decode ``data`` into an upright RGB image, or raise :class:`ImageRejected`.

    Reasons: ``too_many_pixels`` (checked on the header, before decoding: the decompression-bomb
    guard), ``truncated``, ``undecodable``, ``too_small``, ``bad_aspect_ratio``.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises several types for non-images
        raise _decode_error(e) from None
    w, h = img.size
    if limits is not None and w * h > limits.max_pixels:
        raise ImageRejected("too_many_pixels", f"{w}x{h} > {limits.max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except Exception as e:
        raise _decode_error(e) from None
    if limits is not None:
        w, h = rgb.size
        if min(w, h) < limits.min_side:
            raise ImageRejected("too_small", f"{w}x{h}, min side {limits.min_side}")
        if max(w, h) / min(w, h) > limits.max_aspect_ratio:
            raise ImageRejected("bad_aspect_ratio", f"{w}x{h} > {limits.max_aspect_ratio}")
    return rgb


def image_rgb(image, decode=decode_rgb) -> Image.Image:
    """An image given as a path, encoded bytes or a PIL image, as RGB: files and bytes through ``decode``
    (:func:`decode_rgb`, or :func:`decode_rgb_as_stored` for LLaVA), a PIL image converted."""
    if isinstance(image, (str, Path)):
        return decode(Path(image).read_bytes())
    if isinstance(image, (bytes, bytearray)):
        return decode(bytes(image))
    return image.convert("RGB")
