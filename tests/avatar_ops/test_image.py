"""Decoding: every supported mode comes out as RGB uint8; every bad file gets its specific reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from avatar_ops.io.image import DecodeConfig, DecodedImage, decode_image, load_image
from avatar_ops.types import Rejected


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _gradient(w: int = 200, h: int = 160) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 90, np.uint8)], axis=2)


def test_real_samples_decode(samples_dir):
    for path in sorted(samples_dir.glob("*.[jp][pn]g")):
        out = load_image(str(path))
        assert isinstance(out, DecodedImage), (path, out)
        assert out.rgb.dtype == np.uint8 and out.rgb.ndim == 3 and out.rgb.shape[2] == 3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_rgb_formats(fmt):
    rgb = _gradient()
    out = decode_image(_encode(Image.fromarray(rgb), fmt))
    assert isinstance(out, DecodedImage) and out.format == fmt
    assert out.rgb.shape == rgb.shape
    tolerance = 0 if fmt == "PNG" else 12
    assert np.abs(out.rgb.astype(int) - rgb.astype(int)).mean() <= tolerance


def test_exif_orientation_is_applied():
    rgb = _gradient(200, 160)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(_encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes()))
    assert isinstance(out, DecodedImage)
    assert out.rgb.shape[:2] == (200, 160)


def test_rgba_keeps_alpha_as_mask():
    rgba = np.zeros((160, 200, 4), np.uint8)
    rgba[..., :3] = _gradient()
    rgba[40:120, 50:150, 3] = 255
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert isinstance(out, DecodedImage) and out.alpha is not None
    assert ((out.alpha > 127) == (rgba[..., 3] > 127)).all()


def test_opaque_alpha_is_no_mask():
    rgba = np.full((160, 200, 4), 255, np.uint8)
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert isinstance(out, DecodedImage) and out.alpha is None


def test_grayscale_palette_cmyk_16bit():
    gray = Image.fromarray(_gradient()[..., 0])
    out = decode_image(_encode(gray, "PNG"))
    assert isinstance(out, DecodedImage) and out.rgb.shape == (160, 200, 3)
    assert (out.rgb[..., 0] == out.rgb[..., 2]).all()

    palette = Image.fromarray(_gradient()).convert("P", palette=Image.ADAPTIVE, colors=16)
    out = decode_image(_encode(palette, "PNG"))
    assert isinstance(out, DecodedImage) and out.rgb.shape == (160, 200, 3) and out.mode == "P"

    cmyk = Image.fromarray(_gradient()).convert("CMYK")
    out = decode_image(_encode(cmyk, "JPEG"))
    assert isinstance(out, DecodedImage) and out.mode == "CMYK"
    assert np.abs(out.rgb.astype(int) - _gradient().astype(int)).mean() < 20

    sixteen = (np.linspace(0, 65535, 200 * 160).reshape(160, 200)).astype(np.uint16)
    out = decode_image(_encode(Image.fromarray(sixteen), "PNG"))
    assert isinstance(out, DecodedImage) and out.mode.startswith("I")
    assert out.rgb[0, 0, 0] == 0 and out.rgb[-1, -1, 0] == 255


@pytest.mark.parametrize(
    ("data_fn", "reason"),
    [
        (lambda: b"", "empty_file"),
        (lambda: b"this is a text file, not a photo\n" * 20, "not_an_image"),
        (lambda: _encode(Image.fromarray(_gradient(400, 400)), "JPEG")[:3000], "truncated_image"),
        (lambda: _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)), "PNG")[:20000], "truncated_image"),
        (lambda: _encode(Image.fromarray(_gradient(64, 64)), "PNG"), "too_small"),
        (lambda: _encode(Image.fromarray(_gradient(200, 160)), "GIF"), "unsupported_format"),
    ],
)
def test_bad_files_are_rejected_with_reason(data_fn, reason):
    out = decode_image(data_fn())
    assert isinstance(out, Rejected), out
    assert out.reason == reason, out


def test_decompression_bomb_rejected_before_decoding():
    # A 1-bit 20000x20000 PNG is a few KB on disk and 400 Mpx decoded.
    bomb = _encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 200_000
    out = decode_image(bomb, DecodeConfig(max_pixels=50_000_000))
    assert isinstance(out, Rejected) and out.reason == "too_many_pixels"
    assert "max_pixels" in out.detail


def test_limits_are_configurable():
    data = _encode(Image.fromarray(_gradient(300, 300)), "PNG")
    assert isinstance(decode_image(data, DecodeConfig(max_pixels=50_000)), Rejected)
    assert isinstance(decode_image(data, DecodeConfig(min_side=400)), Rejected)
    assert isinstance(decode_image(data), DecodedImage)


def test_wrong_argument_type_raises():
    with pytest.raises(TypeError, match="data"):
        decode_image("not bytes")  # type: ignore[arg-type]
