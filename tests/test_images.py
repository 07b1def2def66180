"""Unit tests: decoding to RGB and the filter's checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import noisy_jpeg, solid
from sailflow.data.download import download_reason
from sailflow.data.images import ImageLimits, ImageRejected, decode_rgb

LIMITS = ImageLimits(min_side=8, max_pixels=100 * 100, max_aspect_ratio=3.0)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _reason(data: bytes) -> str:
    with pytest.raises(ImageRejected) as e:
        decode_rgb(data, LIMITS)
    return e.value.reason


def test_rgb_passes_unchanged():
    a = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    out = decode_rgb(_png(Image.fromarray(a)), LIMITS)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert np.array_equal(np.asarray(out), a)


@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("L", 77, (77, 77, 77)),
        ("LA", (77, 255), (77, 77, 77)),
        ("LA", (0, 0), (255, 255, 255)),  # fully transparent -> white
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),  # half transparent red over white
        ("1", 1, (255, 255, 255)),
    ],
)
def test_modes_become_rgb(mode, value, expected):
    out = np.asarray(decode_rgb(_png(Image.new(mode, (16, 16), value)), LIMITS))
    assert out.shape == (16, 16, 3)
    assert np.abs(out[5, 5].astype(int) - expected).max() <= 1


def test_sixteen_bit_grey_is_scaled_not_clipped():
    a = np.array([[0, 256, 32768, 65535]] * 8, dtype=np.uint16)
    out = np.asarray(decode_rgb(_png(Image.fromarray(a).resize((32, 16), Image.NEAREST)), LIMITS))
    assert out[0, ::8, 0].tolist() == [0, 1, 128, 255]


def test_cmyk_jpeg_and_palette_with_transparency():
    cmyk = decode_rgb(solid((10, 200, 10), mode="CMYK", fmt="JPEG", quality=95), LIMITS)
    assert np.abs(np.asarray(cmyk)[4, 4].astype(int) - [10, 200, 10]).max() < 12
    p = Image.new("P", (16, 16), 0)
    p.putpalette([9, 9, 9, 0, 0, 255] + [0] * 762)
    p.paste(1, (4, 4, 12, 12))
    out = np.asarray(decode_rgb(_png(p, transparency=0), LIMITS))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[8, 8]) == (0, 0, 255)


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = decode_rgb(buf.getvalue(), LIMITS)
    assert out.size == (20, 40)


def test_llava_reads_the_stored_pixels_as_its_reference_does(tmp_path):
    """LLaVA's code reads ``Image.open(f).convert("RGB")``: no EXIF rotation, alpha dropped. Its training reader
    and its evaluation / chat reader both do, where the SAIL stages turn the image upright and put alpha on white."""
    from sailflow.data.images import decode_rgb_as_stored
    from sailflow.llava.data import ImageRef
    from sailflow.llava.generate import _rgb

    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    rgba = _png(Image.new("RGBA", (8, 8), (255, 0, 0, 0)))  # fully transparent red
    for data in (buf.getvalue(), rgba):
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        f = tmp_path / f"{len(data)}.img"
        f.write_bytes(data)
        for got in (decode_rgb_as_stored(data), ImageRef(str(f)).read(), _rgb(str(f)), _rgb(data)):
            assert np.array_equal(np.asarray(got), ref)
    assert decode_rgb_as_stored(buf.getvalue()).size == (40, 20)  # as stored; decode_rgb gives (20, 40)
    assert tuple(np.asarray(decode_rgb_as_stored(rgba))[0, 0]) == (255, 0, 0)  # decode_rgb: white
    with pytest.raises(ImageRejected):
        decode_rgb_as_stored(b"<html>no</html>")


def test_rejections():
    assert _reason(b"<html>no</html>") == "undecodable"
    assert _reason(b"") == "undecodable"
    assert _reason(noisy_jpeg(1, size=(64, 64))[:600]) == "truncated"
    assert _reason(solid((1, 2, 3), size=(1, 1))) == "too_small"
    assert _reason(solid((1, 2, 3), size=(7, 40))) == "too_small"
    assert _reason(solid((1, 2, 3), size=(90, 20))) == "bad_aspect_ratio"
    assert _reason(solid((1, 2, 3), size=(101, 100))) == "too_many_pixels"
    decode_rgb(solid((1, 2, 3), size=(100, 100)), LIMITS)  # exactly at the limits: kept
    decode_rgb(solid((1, 2, 3), size=(30, 10)), LIMITS)


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    # A 20000 x 20000 PNG header: rejected from the header alone, without allocating 1.2 GB.
    big = _png(Image.new("L", (20000, 20000), 0), optimize=False)
    called = []
    monkeypatch.setattr(Image.Image, "load", lambda self: called.append(1))
    with pytest.raises(ImageRejected) as e:
        decode_rgb(big, LIMITS)
    assert e.value.reason == "too_many_pixels" and not called


@pytest.mark.parametrize(
    "message,reason",
    [
        ("HTTP Error 404: Not Found", "http_404"),
        ("HTTP Error 500: Internal Server Error", "http_500"),
        ("<urlopen error timed out>", "timeout"),
        ("The read operation timed out", "timeout"),
        ("image too small", "too_small"),
        ("image area too large", "too_many_pixels"),
        ("aspect ratio too large", "bad_aspect_ratio"),
        ("Image decoding error", "undecodable"),
        ("Use of image disallowed by X-Robots-Tag directive", "robots_disallowed"),
        ("<urlopen error [Errno 111] Connection refused>", "download_error"),
    ],
)
def test_download_reason(message, reason):
    assert download_reason(message) == reason
