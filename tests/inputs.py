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
