"""``.splat``: the compact splat format web viewers load directly (antimatter15/splat's layout,
read by antimatter15/splat, GaussianSplats3D ``SplatParser``, SuperSplat / splat-transform
``read-splat.ts``, Spark).

No header; one 32-byte little-endian record per Gaussian:
    position  3 x float32
    scale     3 x float32, linear (``exp`` of the PLY's log scales)
    colour    4 x uint8, RGBA: ``(0.5 + SH_C0 * f_dc) * 255`` and ``sigmoid(opacity) * 255``
    rotation  4 x uint8, ``q / |q| * 128 + 128``, w first (readers decode ``(b - 128) / 128``)
Records are sorted by descending ``scale_0 * scale_1 * scale_2 * alpha``, as antimatter15's
``convert.py`` sorts them. Same frame as the PLY files (OpenCV axes, y down,
:mod:`avatar_ops.avatar.ply`). Colour and rotation are rounded to the nearest byte where
``convert.py`` truncates: same layout, half the quantisation error.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from avatar_ops.avatar.ply import SH_C0, Splats

RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])  # 32 bytes


@dataclasses.dataclass
class SplatRecords:
    """A ``.splat`` file's records, in file order.

    Attributes:
        positions: [N, 3] float32 centres.
        scales: [N, 3] float32 linear standard deviations.
        rgba: [N, 4] uint8 colour and alpha.
        quats: [N, 4] float32 unit quaternions (w, x, y, z), decoded from their bytes.
    """

    positions: np.ndarray
    scales: np.ndarray
    rgba: np.ndarray
    quats: np.ndarray

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def splat_bytes(splats: Splats) -> bytes:
    """``splats`` as a ``.splat`` file (the layout in the module docstring)."""
    importance = np.exp(splats.log_scales.astype(np.float64).sum(1)) * _sigmoid(splats.opacity_logits.astype(np.float64))
    order = np.argsort(-importance, kind="stable")
    rgb = 0.5 + SH_C0 * splats.sh_dc.astype(np.float64)
    alpha = _sigmoid(splats.opacity_logits.astype(np.float64))[:, None]
    quats = splats.quats.astype(np.float64)
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    records = np.empty(len(splats), RECORD)
    records["position"] = splats.means[order]
    records["scale"] = np.exp(splats.log_scales[order].astype(np.float64))
    records["rgba"] = np.clip(np.rint(np.concatenate([rgb, alpha], 1)[order] * 255), 0, 255)
    records["rotation"] = np.clip(np.rint(quats[order] * 128 + 128), 0, 255)
    return records.tobytes()


def read_splat(data: bytes) -> SplatRecords:
    """Decode a ``.splat`` file's bytes."""
    if len(data) % RECORD.itemsize:
        raise ValueError(f"`data` must be a whole number of {RECORD.itemsize}-byte .splat records, got {len(data)} bytes.")
    records = np.frombuffer(data, RECORD)
    quats = (records["rotation"].astype(np.float32) - 128) / 128
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"`data` holds {int((norm == 0).sum())} records with an all-zero rotation (bytes 128, 128, 128, 128).")
    return SplatRecords(
        positions=records["position"].copy(), scales=records["scale"].copy(), rgba=records["rgba"].copy(), quats=quats / norm
    )
