"""Inputs shared by the batch and Serve tests: the foundation issue's bad photos, each with the
reason it must be rejected for."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def bad_files(samples_dir: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reason)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    scene = np.stack([(x / 640 * 255), (y / 480 * 200), np.full_like(x, 120.0)], -1).astype(np.uint8)
    scene[300:420, 100:260] = (60, 140, 60)
    gif = io.BytesIO()
    Image.fromarray(scene).save(gif, format="GIF")
    photo = (samples_dir / "elder_fruit_halfbody.jpg").read_bytes()
    return {
        "empty.jpg": (b"", "empty_file"),
        "notes.png": (b"%PDF-1.4 not a photo" * 10, "not_an_image"),
        "cut.jpg": (photo[: len(photo) // 3], "truncated_image"),
        "tiny.png": (png_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "too_small"),
        "bomb.png": (png_bytes(np.zeros((9000, 9000), np.uint8)), "too_many_pixels"),
        "anim.png": (gif.getvalue(), "unsupported_format"),
        "street.png": (png_bytes(scene), "no_person"),
    }


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian TIFF header and one IFD of (tag, type, count, value padded to 4 bytes)."""
    import struct

    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v.ljust(4, b"\0") for t, k, n, v in entries)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def broken_exif_photo(fmt: str = "JPEG", size: tuple[int, int] = (160, 200)) -> bytes:
    """A photo whose EXIF holds an orientation (6: rotate) and a SHORT tag (ResolutionUnit) stored
    as ASCII: Pillow's ``exif_transpose`` raises ``struct.error`` on it."""
    import struct

    exif = _tiff_ifd([(0x0112, 3, 1, struct.pack("<H", 6)), (0x0128, 2, 4, b"ab\0\0")])
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    image = Image.fromarray(np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], -1).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format=fmt, exif=(b"Exif\0\0" + exif) if fmt == "JPEG" else exif)
    return buf.getvalue()


def scan_bomb_jpeg(side: int = 1024, scans: int = 2000) -> bytes:
    """A progressive JPEG whose smallest scan is repeated ``scans`` times before its end: a few
    dozen KB that a decoder works through scan by scan."""
    y, x = np.mgrid[0:side, 0:side]
    image = Image.fromarray(np.stack([x * 255 // side, y * 255 // side, (x + y) * 127 // side], -1).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    spans, i = [], 2
    while data[i + 1] != 0xD9:  # walk the markers up to EOI
        end = i + 2 + ((data[i + 2] << 8) | data[i + 3])
        if data[i + 1] == 0xDA:  # a scan: its entropy-coded data runs to the next real marker
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, 0xFF) and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
            spans.append((i, end))
        i = end
    start, end = min(spans, key=lambda s: s[1] - s[0])
    return data[:i] + data[start:end] * scans + data[i:]


def mpo_photo() -> bytes:
    """A camera-style MPO: a JPEG of 200x160 with a second, smaller image inside."""
    first = Image.fromarray(np.full((160, 200, 3), (200, 120, 60), np.uint8))
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[Image.fromarray(np.zeros((120, 150, 3), np.uint8))])
    return buf.getvalue()
