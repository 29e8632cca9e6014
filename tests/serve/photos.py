"""Small photos for the gated app's tests: distinct per seed, and one whose EXIF breaks Pillow."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, TiffImagePlugin, TiffTags


def photo(seed: int) -> bytes:
    """A 160x160 PNG (about 1 KB), different for every seed: a distinct avatar id each."""
    image = Image.new("RGB", (160, 160), (seed * 37 % 256, seed * 91 % 256, 128))
    ImageDraw.Draw(image).rectangle((seed % 100, 20, seed % 100 + 40, 120), fill=(250, 250, 250))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def exif_photo() -> bytes:
    """A JPEG whose EXIF has Orientation=6 and ResolutionUnit (a SHORT tag) stored as ASCII:
    ``ImageOps.exif_transpose`` raises ``struct.error`` on it."""
    header = b"II\x2a\x00\x08\x00\x00\x00"
    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=header)
    ifd[0x0112] = 6  # Orientation: rotate 90
    ifd[0x0128] = "2"  # ResolutionUnit
    ifd.tagtype[0x0128] = TiffTags.ASCII
    out = io.BytesIO()
    Image.new("RGB", (192, 160), (120, 90, 60)).save(out, "JPEG", exif=b"Exif\x00\x00" + header + ifd.tobytes(8))
    return out.getvalue()
