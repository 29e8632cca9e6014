"""Arrays to bytes and back without pickle (``.npz``, ``allow_pickle=False``)."""

from __future__ import annotations

import io

import numpy as np


def pack(**arrays: np.ndarray) -> bytes:
    """Named numeric arrays -> ``.npz`` bytes."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack`; object arrays are refused."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}
