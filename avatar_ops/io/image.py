"""Decode and validate photos: bytes or URI -> RGB uint8 array (plus an optional alpha mask).

Every way a file can be unusable becomes a :class:`~avatar_ops.types.Rejected` with a specific
reason; only programming errors raise.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field

from avatar_ops.io.storage import read_bytes
from avatar_ops.types import FrozenConfig, Rejected


class DecodeConfig(FrozenConfig):
    """Limits applied when decoding a photo."""

    max_pixels: int = Field(40_000_000, gt=0, description="Largest accepted width*height; larger files are rejected as decompression bombs before any pixel is decoded.")
    min_side: int = Field(128, gt=0, description="Smallest accepted width and height in pixels.")
    max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest accepted encoded file size in bytes.")
    formats: tuple[str, ...] = Field(("JPEG", "PNG", "WEBP"), description="Accepted container formats, as Pillow names them.")


@dataclasses.dataclass
class DecodedImage:
    """A decoded photo.

    Attributes:
        rgb: [H, W, 3] uint8, EXIF orientation applied.
        alpha: [H, W] uint8 when the file had transparency (kept as a person mask), else None.
        format: the container format (``"JPEG"``, ``"PNG"``, ``"WEBP"``).
        mode: the Pillow mode the file was stored in (``"RGB"``, ``"CMYK"``, ``"I;16"``, ...).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _to_8bit(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float array of any depth to uint8."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        hi = float(np.nanmax(array)) if array.size else 1.0
        scale = 255.0 if hi <= 1.0 else 255.0 / max(hi, 1e-8)
        return np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    # 16-bit (or 32-bit integer holding 16-bit data, Pillow's "I" mode): keep the top 8 bits.
    hi = int(array.max()) if array.size else 0
    bits = 16 if hi < 65536 else 32
    return (array.astype(np.uint64) >> (bits - 8)).astype(np.uint8)


def _to_rgb_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_8bit(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2), None
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"))
        alpha = rgba[..., 3].copy()
        # An alpha that is (almost) fully opaque carries no mask: under 1 % transparent pixels.
        transparent = float((alpha < 128).mean())
        return rgba[..., :3].copy(), (alpha if transparent >= 0.01 else None)
    if mode == "CMYK":
        # Pillow undoes Adobe's inverted CMYK itself.
        return np.asarray(image.convert("RGB")).copy(), None
    return np.asarray(image.convert("RGB")).copy(), None


def decode_image(data: bytes, config: DecodeConfig | None = None) -> DecodedImage | Rejected:
    """Decode one encoded photo.

    Args:
        data: the file's bytes.
        config: limits; defaults to :class:`DecodeConfig()`.

    Returns:
        A :class:`DecodedImage`, or a :class:`Rejected` (``reason`` one of the ``bad_input``
        class of :data:`~avatar_ops.types.REJECT_REASONS`).
    """
    config = config or DecodeConfig()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"`data` must be bytes, got {type(data).__name__}.")
    if len(data) == 0:
        return Rejected("empty_file", "the file has 0 bytes")
    if len(data) > config.max_bytes:
        return Rejected("too_many_pixels", f"the file has {len(data)} bytes, more than max_bytes={config.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if fmt not in config.formats:
                return Rejected("unsupported_format", f"format {fmt} is not one of {list(config.formats)}")
            width, height = image.size
            # Checked on the header, before a single pixel is decoded.
            if width * height > config.max_pixels:
                return Rejected("too_many_pixels", f"{width}x{height} = {width * height} pixels, more than max_pixels={config.max_pixels}")
            if min(width, height) < config.min_side:
                return Rejected("too_small", f"{width}x{height} pixels, smaller than min_side={config.min_side}")
            mode = image.mode
            image.load()
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        return Rejected("not_an_image", "the bytes are not a JPEG, PNG or WebP image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejected("too_many_pixels", f"over Pillow's decompression-bomb limit, itself above max_pixels={config.max_pixels}: {exc}")
    except OSError as exc:
        message = str(exc)
        if "truncated" in message or "broken data stream" in message or "unrecognized data stream" in message:
            return Rejected("truncated_image", message)
        return Rejected("unreadable", message)
    except (SyntaxError, ValueError) as exc:  # Pillow's plugins raise these on corrupt headers.
        return Rejected("unreadable", f"{type(exc).__name__}: {exc}")
    rgb, alpha = _to_rgb_alpha(image)
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, format=fmt, mode=mode)


def to_uint8(image) -> np.ndarray:
    """Float image(s) in [0, 1] (a torch tensor, any device) -> a uint8 numpy array."""
    return (image.detach().clamp(0, 1) * 255).round().byte().cpu().numpy()


def load_image(uri: str, config: DecodeConfig | None = None) -> DecodedImage | Rejected:
    """Read ``uri`` through fsspec and decode it; a missing file raises FileNotFoundError."""
    return decode_image(read_bytes(uri), config)
