"""Similarity alignment of point sets (Umeyama 1991), for comparing a fitted body with the truth."""

from __future__ import annotations

import torch
from torch import Tensor


def similarity_transform(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The scale ``s``, rotation ``R`` [3, 3] and translation ``t`` [3] minimising
    ``sum ||target - (s R source + t)||^2`` over corresponding points (Umeyama's closed form: no
    reflection, scale from the singular values).

    Args:
        source: [N, 3] points, N >= 3 and not all on a line.
        target: [N, 3] the points they should land on.
    """
    if source.ndim != 2 or source.shape[1] != 3 or source.shape != target.shape:
        raise ValueError(f"`source` and `target` must both be [N, 3], got {tuple(source.shape)} and {tuple(target.shape)}.")
    if source.shape[0] < 3:
        raise ValueError(f"`source` needs at least 3 points, got {source.shape[0]}.")
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    cov = xt.T @ xs / len(source)
    u, sigma, vt = torch.linalg.svd(cov)
    d = torch.ones(3, dtype=source.dtype, device=source.device)
    if torch.det(u) * torch.det(vt) < 0:
        d[2] = -1
    rotation = u @ torch.diag(d) @ vt
    variance = (xs**2).sum() / len(source)
    if variance <= 0:
        raise ValueError("`source` points all coincide: no scale can be fitted.")
    scale = (sigma * d).sum() / variance
    return scale, rotation, mu_t - scale * rotation @ mu_s


def apply_similarity(points: Tensor, scale: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
    """[..., 3] points moved by ``s R p + t``."""
    return points @ rotation.T * scale + translation
