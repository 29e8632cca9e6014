"""A z-buffered triangle rasteriser (not differentiable): per pixel, the nearest triangle, its
barycentric coordinates and depth. Used for ground-truth renders and mesh hint maps.

Pixels are sampled at their centres; triangles are processed in groups by screen size, each group
testing a fixed window of candidate pixels at once.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass
class Fragments:
    """face [H, W] long (-1 where empty), bary [H, W, 3], depth [H, W] (inf where empty)."""

    face: Tensor
    bary: Tensor
    depth: Tensor

    @property
    def mask(self) -> Tensor:
        return self.face >= 0

    def interpolate(self, attributes: Tensor, faces: Tensor) -> Tensor:
        """[V, C] per-vertex attributes -> [H, W, C] (zeros where empty)."""
        f = self.face.clamp(min=0)
        corners = attributes[faces[f]]  # [H, W, 3, C]
        out = (self.bary[..., None] * corners).sum(-2)
        return torch.where(self.mask[..., None], out, torch.zeros_like(out))


def rasterize_mesh(vertices: Tensor, faces: Tensor, K: Tensor, width: int, height: int, near: float = 1e-3) -> Fragments:
    """Rasterise [V, 3] camera-frame vertices (OpenCV axes) with intrinsics [3, 3]."""
    z = vertices[:, 2]
    uv = vertices[:, :2] / z.clamp(min=near)[:, None] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    tri_uv, tri_z = uv[faces], z[faces]  # [F, 3, 2], [F, 3]
    front = (tri_z > near).all(1)
    lo = torch.floor(tri_uv.min(1).values - 0.5).long() + 1
    hi = torch.floor(tri_uv.max(1).values - 0.5).long()
    size = (hi - lo).max(1).values + 1
    onscreen = front & (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < width) & (lo[:, 1] < height) & (size > 0)
    pixels = height * width
    best_depth = torch.full((pixels,), float("inf"), dtype=vertices.dtype, device=vertices.device)
    candidates = []
    prev = 0
    for window in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096):
        group = torch.nonzero(onscreen & (size > prev) & (size <= window))[:, 0]
        prev = window
        if len(group) == 0:
            continue
        for chunk in torch.split(group, max(1, 2_000_000 // (window * window))):
            ys, xs = torch.meshgrid(torch.arange(window, device=vertices.device), torch.arange(window, device=vertices.device), indexing="ij")
            px = lo[chunk][:, None] + torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)[None]  # [T, W*W, 2]
            centre = px.to(vertices.dtype) + 0.5
            a, b, c = (tri_uv[chunk][:, None, i] for i in range(3))
            area = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
            w0 = (b[..., 0] - centre[..., 0]) * (c[..., 1] - centre[..., 1]) - (b[..., 1] - centre[..., 1]) * (c[..., 0] - centre[..., 0])
            w1 = (c[..., 0] - centre[..., 0]) * (a[..., 1] - centre[..., 1]) - (c[..., 1] - centre[..., 1]) * (a[..., 0] - centre[..., 0])
            safe = torch.where(area.abs() < 1e-12, torch.ones_like(area), area)
            l0, l1 = w0 / safe, w1 / safe
            l2 = 1 - l0 - l1
            inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (area.abs() >= 1e-12)
            inside &= (px[..., 0] >= 0) & (px[..., 0] < width) & (px[..., 1] >= 0) & (px[..., 1] < height)
            # Perspective-correct barycentrics and depth.
            zc = tri_z[chunk][:, None]  # [T, 1, 3]
            inv = torch.stack([l0, l1, l2], -1) / zc
            depth = 1 / inv.sum(-1).clamp(min=1e-12)
            bary = inv * depth[..., None]
            t_idx, p_idx = torch.nonzero(inside, as_tuple=True)
            flat = px[t_idx, p_idx, 1] * width + px[t_idx, p_idx, 0]
            d = depth[t_idx, p_idx]
            best_depth.scatter_reduce_(0, flat, d, reduce="amin")
            candidates.append((flat, d, chunk[t_idx], bary[t_idx, p_idx]))
    face = torch.full((pixels,), -1, dtype=torch.long, device=vertices.device)
    bary_out = torch.zeros(pixels, 3, dtype=vertices.dtype, device=vertices.device)
    for flat, d, f, bc in candidates:
        win = d <= best_depth[flat]
        face[flat[win]] = f[win]
        bary_out[flat[win]] = bc[win]
    return Fragments(face=face.view(height, width), bary=bary_out.view(height, width, 3), depth=best_depth.view(height, width))
