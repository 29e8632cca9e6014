"""A bounded, seeded fuzz of the photo decoder: a few hundred mutations of the sample photos and of
the hostile files (bad EXIF, scan bombs, MPO, bombs by header) each come out as a decoded image or
a ``Rejected``, never another exception, in bounded time and memory."""

from __future__ import annotations

import io
import resource
import time

import numpy as np
from PIL import Image

from avatar_ops.io.image import DecodeConfig, DecodedImage, decode_image
from avatar_ops.types import Rejected
from tests.inputs import bad_files, broken_exif_photo, mpo_photo, scan_bomb_jpeg

CASES = 300
#: Every decode here is of a small file; the limit that holds them is the config's, below.
CONFIG = DecodeConfig(timeout_s=2.0)


def _bases(samples_dir) -> list[bytes]:
    """Small re-encodings of the samples (fast to decode) and the hostile files."""
    bases = []
    for path in sorted(samples_dir.glob("*.[jp][pn]g")):
        image = Image.open(path)
        image.thumbnail((256, 256))
        for fmt, kwargs in (("JPEG", {"quality": 85}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {"quality": 80})):
            buf = io.BytesIO()
            image.convert("RGBA" if fmt != "JPEG" and image.mode == "RGBA" else "RGB").save(buf, format=fmt, **kwargs)
            bases.append(buf.getvalue())
    bases += [broken_exif_photo("JPEG"), broken_exif_photo("PNG"), mpo_photo(), scan_bomb_jpeg(256, 100)]
    bases += [data for data, _ in bad_files(samples_dir).values() if 0 < len(data) < 2_000_000]
    return bases


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = rng.integers(6)
    if kind == 0 and buf:  # flip bytes
        for i in rng.integers(0, len(buf), size=rng.integers(1, 16)):
            buf[i] = int(rng.integers(256))
    elif kind == 1:  # truncate
        buf = buf[: int(rng.integers(0, len(buf) + 1))]
    elif kind == 2 and len(buf) > 8:  # repeat a chunk
        a = int(rng.integers(0, len(buf) - 4))
        b = min(len(buf), a + int(rng.integers(1, 512)))
        buf[b:b] = buf[a:b] * int(rng.integers(1, 20))
    elif kind == 3:  # insert garbage
        at = int(rng.integers(0, len(buf) + 1))
        buf[at:at] = rng.integers(0, 256, size=int(rng.integers(1, 256)), dtype=np.uint8).tobytes()
    elif kind == 4 and len(buf) > 32:  # corrupt the header region (sizes, chunk lengths, markers)
        for i in rng.integers(0, min(len(buf), 256), size=rng.integers(1, 6)):
            buf[i] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, int(rng.integers(256))]))
    # kind 5: unchanged
    return bytes(buf)


def test_mutated_photos_decode_or_are_rejected_within_bounds(samples_dir):
    rng = np.random.default_rng(1234)
    bases = _bases(samples_dir)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"decoded": 0, "rejected": 0}
    slowest = 0.0
    for case in range(CASES):
        data = _mutate(bases[case % len(bases)], rng)
        t0 = time.perf_counter()
        out = decode_image(data, CONFIG)
        spent = time.perf_counter() - t0
        slowest = max(slowest, spent)
        assert isinstance(out, (DecodedImage, Rejected)), (case, type(out))
        assert spent < CONFIG.timeout_s + 1.0, (case, spent)  # one read past the deadline at most
        if isinstance(out, DecodedImage):
            assert out.rgb.dtype == np.uint8 and out.rgb.ndim == 3 and max(out.rgb.shape[:2]) <= CONFIG.max_side
        outcomes["decoded" if isinstance(out, DecodedImage) else "rejected"] += 1
    # Both outcomes occur (the mutations are neither all harmless nor all fatal).
    assert outcomes["decoded"] > CASES // 10 and outcomes["rejected"] > CASES // 10, outcomes
    # Inputs of at most a few hundred KB and 256 px: the process grows by far less than one
    # full-size decode (a 40 MP RGB image is 120 MB).
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 120, grown_mb
