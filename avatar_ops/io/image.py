"""Decode and validate photos: bytes or URI -> RGB uint8 array (plus an optional alpha mask).

Every way a file can be unusable becomes a :class:`~avatar_ops.types.Rejected` with a specific
reason; only programming errors raise. Every cost is bounded before it is paid: the file's size
(read at most ``max_bytes`` + 1), the header's pixel count, a JPEG's number of scans, and the
decode's wall time (checked as the decoder reads). A photo larger than ``max_side`` is
downscaled once here (a JPEG through its DCT scaling while decoding), so what the pipeline holds
per photo is at most ``max_side`` squared pixels: 3 bytes each, 4 with alpha. Metadata that
cannot be read (a broken EXIF orientation) leaves the pixels as stored, with a note.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import time
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field

from avatar_ops.io.storage import read_bytes_at_most
from avatar_ops.types import FrozenConfig, Rejected


class DecodeConfig(FrozenConfig):
    """Limits applied when decoding a photo."""

    max_pixels: int = Field(40_000_000, gt=0, description="Largest accepted width*height; larger files are rejected as decompression bombs before any pixel is decoded.")
    min_side: int = Field(128, gt=0, description="Smallest accepted width and height in pixels.")
    max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest accepted encoded file size in bytes.")
    formats: tuple[str, ...] = Field(("JPEG", "PNG", "WEBP"), description="Accepted container formats, as Pillow names them (MPO, a camera JPEG with more images inside, is read as its first image where JPEG is accepted).")
    max_side: int = Field(2048, ge=128, description="Longer side a photo is downscaled to at decode, once (every stage works at or below it); a JPEG is decoded at a reduced DCT scale where that gets most of the way, so it never holds its full resolution.")
    max_jpeg_scans: int = Field(64, ge=1, description="Most scans a JPEG may have (a progressive camera JPEG has about 10; each scan of a large image costs tens of milliseconds to decode).")
    timeout_s: float = Field(10.0, gt=0, description="Wall time one decode may take; beyond it the photo is rejected as decode_timeout.")


@dataclasses.dataclass
class DecodedImage:
    """A decoded photo.

    Attributes:
        rgb: [H, W, 3] uint8, EXIF orientation applied.
        alpha: [H, W] uint8 when the file had transparency (kept as a person mask), else None.
        format: the container format (``"JPEG"``, ``"MPO"``, ``"PNG"``, ``"WEBP"``).
        mode: the Pillow mode the file was stored in (``"RGB"``, ``"CMYK"``, ``"I;16"``, ...).
        scale: decoded pixels per pixel of the file (1.0 unless downscaled to ``max_side``);
            coordinates given in the file's pixels (supplied keypoints) are multiplied by it.
        notes: what was read with trouble but did not stop the decode (a broken EXIF).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str
    scale: float = 1.0
    notes: tuple[str, ...] = ()

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


class _DecodeTimeout(Exception):
    """Raised from inside Pillow's reads when the decode's deadline has passed."""


class _DeadlineReader(io.BytesIO):
    """The file's bytes, refusing to be read past a deadline (Pillow decodes as it reads)."""

    def __init__(self, data: bytes, deadline: float) -> None:
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise _DecodeTimeout
        return super().read(size)


def jpeg_scan_count(data: bytes | memoryview, stop_after: int) -> int:
    """Scans (SOS markers) of the first image of a JPEG stream, counted by walking its markers
    (entropy-coded data is skipped: a 0xFF there is always stuffed or a restart marker); stops
    counting past ``stop_after``. Not a JPEG: 0."""
    view = memoryview(data)
    n, i, scans = len(view), 2, 0
    if n < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return 0
    while i + 4 <= n:
        if view[i] != 0xFF:
            i += 1  # stray byte between segments: tolerated, as decoders do
            continue
        marker = view[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # EOI: the first image ends (an MPO's others follow)
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = (view[i + 2] << 8) | view[i + 3]
        i += 2 + length
        if marker == 0xDA:
            scans += 1
            if scans > stop_after:
                break
            while i + 1 < n and not (view[i] == 0xFF and view[i + 1] not in (0x00, 0xFF) and not 0xD0 <= view[i + 1] <= 0xD7):
                i += 1
    return scans


def _transposed(image: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """EXIF orientation applied; metadata Pillow cannot parse leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image), ()
    except (struct.error, ValueError, TypeError, KeyError, IndexError, SyntaxError, OSError) as exc:
        return image, (f"EXIF orientation not applied, the metadata is unreadable ({type(exc).__name__}: {exc})",)


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
        return Rejected("too_many_pixels", f"the file has more than max_bytes={config.max_bytes} bytes")
    deadline = time.monotonic() + config.timeout_s
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(_DeadlineReader(bytes(data), deadline))
            fmt = image.format or "unknown"
            accepted = fmt in config.formats or (fmt == "MPO" and "JPEG" in config.formats)
            if not accepted:
                return Rejected("unsupported_format", f"format {fmt} is not one of {list(config.formats)}")
            width, height = image.size
            # Checked on the header, before a single pixel is decoded.
            if width * height > config.max_pixels:
                return Rejected("too_many_pixels", f"{width}x{height} = {width * height} pixels, more than max_pixels={config.max_pixels}")
            if min(width, height) < config.min_side:
                return Rejected("too_small", f"{width}x{height} pixels, smaller than min_side={config.min_side}")
            if fmt in ("JPEG", "MPO"):
                scans = jpeg_scan_count(data, config.max_jpeg_scans)
                if scans > config.max_jpeg_scans:
                    return Rejected("too_many_scans", f"the JPEG has more than max_jpeg_scans={config.max_jpeg_scans} scans")
            mode = image.mode
            scale = min(1.0, config.max_side / max(width, height))
            if scale < 1.0 and fmt in ("JPEG", "MPO"):
                # DCT scaling (1/2, 1/4, 1/8) to the smallest size still at least the target.
                image.draft(image.mode, (max(1, round(width * scale)), max(1, round(height * scale))))
            image.decodermaxblock = 16 * 1024  # small reads, so the deadline is checked often
            image.load()
            image, notes = _transposed(image)
            if max(image.size) > config.max_side:
                target = config.max_side / max(image.size)
                image = image.resize((max(1, round(image.width * target)), max(1, round(image.height * target))), Image.Resampling.LANCZOS, reducing_gap=2.0)
            if time.monotonic() > deadline:
                raise _DecodeTimeout
    except _DecodeTimeout:
        return Rejected("decode_timeout", f"decoding took longer than timeout_s={config.timeout_s:g} s")
    except UnidentifiedImageError:
        return Rejected("not_an_image", "the bytes are not a JPEG, PNG or WebP image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Rejected("too_many_pixels", f"over Pillow's decompression-bomb limit, itself above max_pixels={config.max_pixels}: {exc}")
    except OSError as exc:
        message = str(exc)
        if "truncated" in message or "broken data stream" in message or "unrecognized data stream" in message:
            return Rejected("truncated_image", message)
        return Rejected("unreadable", message)
    except (SyntaxError, ValueError, struct.error, EOFError) as exc:  # Pillow's plugins raise these on corrupt headers.
        return Rejected("unreadable", f"{type(exc).__name__}: {exc}")
    rgb, alpha = _to_rgb_alpha(image)
    # The scale the pipeline sees: decoded width over the file's (orientation applied).
    stored_long = max(width, height)
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, format=fmt, mode=mode, scale=max(rgb.shape[:2]) / stored_long, notes=notes)


def to_uint8(image) -> np.ndarray:
    """Float image(s) in [0, 1] (a torch tensor, any device) -> a uint8 numpy array."""
    return (image.detach().clamp(0, 1) * 255).round().byte().cpu().numpy()


def load_image(uri: str, config: DecodeConfig | None = None) -> DecodedImage | Rejected:
    """Read ``uri`` through fsspec (at most ``max_bytes`` + 1 bytes) and decode it; a missing file
    raises FileNotFoundError."""
    config = config or DecodeConfig()
    return decode_image(read_bytes_at_most(uri, config.max_bytes + 1), config)
