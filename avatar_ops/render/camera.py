"""Pinhole cameras: the one place camera conventions live.

Conventions, everywhere in this project:
    camera axes: OpenCV (x right, y down, z forward); a point is in front of the camera when z > 0.
    world: y up; cameras from :func:`look_at` and :func:`orbit_cameras` stand upright (image up
        is world +y).
    extrinsics: [4, 4] world-to-camera transforms (``viewmats``).
    intrinsics: [3, 3] in pixels (focal lengths fx, fy and principal point cx, cy); the pixel in
        column x, row y covers [x, x + 1) x [y, y + 1), its centre at (x + 0.5, y + 0.5).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor


@dataclasses.dataclass
class Cameras:
    """Pinhole cameras with OpenCV axes (x right, y down, z forward).

    Attributes:
        viewmats: [C, 4, 4] world-to-camera transforms.
        Ks: [C, 3, 3] intrinsics in pixels.
        width, height: image size shared by all cameras.
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmats.ndim != 3 or self.viewmats.shape[1:] != (4, 4):
            raise ValueError(f"`viewmats` must be [C, 4, 4], got {tuple(self.viewmats.shape)}.")
        if self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise ValueError(f"`Ks` must be [C, 3, 3] = [{self.viewmats.shape[0]}, 3, 3], got {tuple(self.Ks.shape)}.")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"`width` and `height` must be >= 1, got {self.width}x{self.height}.")

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def to(self, device) -> Cameras:
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height)

    def scaled(self, factor: float) -> Cameras:
        """The same cameras rendering images ``factor`` times the size."""
        ks = self.Ks.clone()
        ks[:, :2] *= factor
        return Cameras(self.viewmats, ks, max(1, round(self.width * factor)), max(1, round(self.height * factor)))

    def __getitem__(self, index) -> Cameras:
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height)


def intrinsics_for(width: int, height: int, focal_factor: float) -> np.ndarray:
    """[3, 3] float32 intrinsics of a photo: focal ``focal_factor`` times its longer side, centred."""
    f = focal_factor * max(width, height)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=np.float32)


def project(points: Tensor, intrinsics: Tensor) -> Tensor:
    """[B, N, 3] camera-frame points, [B, 3, 3] intrinsics -> [B, N, 2] pixels (depth clamped at 1 mm)."""
    z = points[..., 2:3].clamp(min=1e-3)
    uv = points[..., :2] / z
    return uv * intrinsics[:, None, [0, 1], [0, 1]] + intrinsics[:, None, :2, 2]


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """[3] camera position and target -> [4, 4] world-to-camera (OpenCV axes, world y up)."""
    up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device) if up is None else up
    forward = (target - eye) / (target - eye).norm()
    right = torch.linalg.cross(forward, up, dim=-1)
    right = right / right.norm().clamp(min=1e-9)
    down = torch.linalg.cross(forward, right, dim=-1)
    rot = torch.stack([right, down, forward])
    view = torch.eye(4, dtype=eye.dtype, device=eye.device)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


def orbit_cameras(n_views: int, target: Tensor, distance: float, elevation_deg: float, size: int, fov_deg: float = 40.0, start_deg: float = 0.0) -> Cameras:
    """``n_views`` cameras on a circle around ``target`` (world y up), the first in front (+z)."""
    if n_views < 1:
        raise ValueError(f"`n_views` must be >= 1, got {n_views}.")
    views = []
    elev = math.radians(elevation_deg)
    for i in range(n_views):
        azim = math.radians(start_deg) + 2 * math.pi * i / n_views
        offset = torch.tensor([math.sin(azim) * math.cos(elev), math.sin(elev), math.cos(azim) * math.cos(elev)], dtype=target.dtype) * distance
        views.append(look_at(target + offset, target))
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    k = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]], dtype=target.dtype)
    return Cameras(torch.stack(views), k.expand(n_views, 3, 3).clone(), size, size)
