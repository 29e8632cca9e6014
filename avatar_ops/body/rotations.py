"""Rotation conversions (batched, differentiable, safe at the zero rotation)."""

from __future__ import annotations

import torch
from torch import Tensor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula.

    Args:
        axis_angle: [..., 3] rotation vectors (radians).

    Returns:
        [..., 3, 3] rotation matrices.
    """
    angle = torch.linalg.norm(axis_angle, dim=-1, keepdim=True)  # [..., 1]
    small = angle < 1e-6
    safe_angle = torch.where(small, torch.ones_like(angle), angle)
    axis = axis_angle / safe_angle
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(axis.shape[:-1] + (3, 3))
    sin = torch.sin(angle)[..., None]
    cos = torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    rot = eye + sin * k + (1 - cos) * (k @ k)
    # First-order expansion near zero keeps gradients finite.
    aa = axis_angle
    ax, ay, az = aa.unbind(-1)
    k_small = torch.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], dim=-1).reshape(k.shape)
    return torch.where(small[..., None], eye + k_small, rot)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Inverse of :func:`axis_angle_to_matrix` for angles in [0, pi).

    Args:
        matrix: [..., 3, 3] rotation matrices.

    Returns:
        [..., 3] rotation vectors.
    """
    trace = matrix[..., 0, 0] + matrix[..., 1, 1] + matrix[..., 2, 2]
    cos = ((trace - 1) / 2).clamp(-1 + 1e-7, 1 - 1e-7)
    angle = torch.acos(cos)
    vec = torch.stack(
        [matrix[..., 2, 1] - matrix[..., 1, 2], matrix[..., 0, 2] - matrix[..., 2, 0], matrix[..., 1, 0] - matrix[..., 0, 1]],
        dim=-1,
    )
    sin = torch.sin(angle)
    scale = torch.where(sin.abs() < 1e-6, torch.full_like(sin, 0.5), angle / (2 * sin))
    return vec * scale[..., None]


def rotation_between(a: Tensor, b: Tensor) -> Tensor:
    """Smallest rotation taking direction ``a`` [3] onto direction ``b`` [3]; returns [3, 3]."""
    a = a / torch.linalg.norm(a)
    b = b / torch.linalg.norm(b)
    axis = torch.linalg.cross(a, b)
    sin = torch.linalg.norm(axis)
    cos = torch.dot(a, b)
    if sin < 1e-8:
        if cos > 0:
            return torch.eye(3, dtype=a.dtype)
        raise ValueError(f"`a` and `b` are opposite ({a.tolist()} vs {b.tolist()}): the rotation is not unique.")
    return axis_angle_to_matrix(axis / sin * torch.atan2(sin, cos))
