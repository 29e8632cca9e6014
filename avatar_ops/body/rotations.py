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


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z), normalised here -> [..., 3, 3] rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(q.shape[:-1] + (3, 3))  # fmt: skip


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions (w, x, y, z), w >= 0.

    Shepperd's method: of the four candidate formulas, each element uses the one with the largest
    denominator, so it is stable at every angle, including pi.
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # [..., 4 candidates, 4]
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(candidates, -2, best[..., None].expand(*best.shape, 4))[..., 0, :]
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z) -> [..., 3] rotation vectors with angle in [0, pi]."""
    q = torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)
    v = q[..., 1:]
    norm = torch.linalg.norm(v, dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, q[..., :1])
    small = norm < 1e-7
    scale = torch.where(small, 2.0 / q[..., :1].clamp(min=1e-7), angle / torch.where(small, torch.ones_like(norm), norm))
    return v * scale


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Inverse of :func:`axis_angle_to_matrix` (angle in [0, pi]; stable at 0 and at pi).

    Args:
        matrix: [..., 3, 3] rotation matrices.

    Returns:
        [..., 3] rotation vectors.
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


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
