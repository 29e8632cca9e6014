"""The project's triangle rasteriser (not differentiable).

:func:`rasterize_mesh` and :func:`rasterize_triangles` z-buffer a mesh: per pixel, the nearest
triangle, its barycentric coordinates and depth (ground-truth renders, mesh hint maps, visibility).
:func:`rasterize_silhouette` fills a projected mesh, no depth, at a reduced size (the tracking fit's
mask IoU and its overlay picture).

Pixels are sampled at their centres; triangles are processed in groups by the size of their
bounding box clipped to the image, each group testing a fixed window of candidate pixels (a power
of two on each side) at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

_CHUNK_PIXELS = 2_000_000  # candidate pixel tests per chunk (bounds the memory of one step)


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
    return rasterize_triangles(uv, z, faces, width, height, near)


def rasterize_triangles(uv: Tensor, z: Tensor, faces: Tensor, width: int, height: int, near: float = 1e-3) -> Fragments:
    """Z-buffer triangles already in pixel space.

    Args:
        uv: [V, 2] vertex positions in pixels.
        z: [V] vertex depths along the camera's z axis (for the z-test and perspective-correct
            barycentrics); triangles with a corner at ``z <= near`` are dropped.
        faces: [F, 3] triangle vertex indices; both windings are drawn.
        width, height: the image size.

    Returns:
        The nearest triangle per pixel centre.
    """
    tri_uv, tri_z = uv[faces], z[faces]  # [F, 3, 2], [F, 3]
    pixels = height * width
    best_depth = torch.full((pixels,), float("inf"), dtype=uv.dtype, device=uv.device)
    candidates = []
    for tri, flat, screen in _coverage(tri_uv, (tri_z > near).all(1), width, height):
        # Perspective-correct barycentrics and depth.
        inv = screen / tri_z[tri]
        depth = 1 / inv.sum(-1).clamp(min=1e-12)
        best_depth.scatter_reduce_(0, flat, depth, reduce="amin")
        candidates.append((flat, depth, tri, inv * depth[:, None]))
    face = torch.full((pixels,), -1, dtype=torch.long, device=uv.device)
    bary_out = torch.zeros(pixels, 3, dtype=uv.dtype, device=uv.device)
    for flat, d, f, bc in candidates:
        win = d <= best_depth[flat]
        face[flat[win]] = f[win]
        bary_out[flat[win]] = bc[win]
    return Fragments(face=face.view(height, width), bary=bary_out.view(height, width, 3), depth=best_depth.view(height, width))


def rasterize_silhouette(uv: np.ndarray, faces: np.ndarray, width: int, height: int, max_side: int = 256) -> np.ndarray:
    """Fill projected triangles (no depth test), drawn and returned at a reduced size.

    Args:
        uv: [V, 2] projected vertices, in pixels of the ``width`` x ``height`` image.
        faces: [F, 3] triangle vertex indices; both windings are drawn.
        width, height: the image size.
        max_side: the mask's longer side (never more than the image's).

    Returns:
        [h, w] bool silhouette at the reduced size (``scale = min(1, max_side / max(width, height))``).
    """
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"`uv` must be [V, 2], got {uv.shape}.")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"`faces` must be [F, 3], got {faces.shape}.")
    if max_side < 1:
        raise ValueError(f"`max_side` must be >= 1, got {max_side}.")
    scale = min(1.0, max_side / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    corners = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64))
    tri_uv = torch.from_numpy(np.ascontiguousarray(uv, dtype=np.float64))[corners] * scale  # [F, 3, 2]
    mask = torch.zeros(h * w, dtype=torch.bool)
    for _, flat, _ in _coverage(tri_uv, torch.ones(len(faces), dtype=torch.bool), w, h):
        mask[flat] = True
    return mask.view(h, w).numpy()


def _coverage(tri_uv: Tensor, keep: Tensor, width: int, height: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Per chunk of [F, 3, 2] triangles (those ``keep`` [F] marks), every pixel centre inside one:
    triangle index [N], flat pixel index [N] and screen-space barycentrics [N, 3]."""
    device = tri_uv.device
    lo = (torch.floor(tri_uv.min(1).values - 0.5).long() + 1).clamp(min=0)  # first pixel whose centre may be inside
    hi = torch.minimum(torch.floor(tri_uv.max(1).values - 0.5).long(), torch.tensor([width - 1, height - 1], device=device))
    keep = keep & (hi >= lo).all(1)
    # Window: the smallest power of two covering the clipped box, per axis (body meshes seen from the
    # side have many thin triangles, which a square window would test mostly outside).
    log_size = torch.ceil(torch.log2((hi - lo + 1).clamp(min=1).double())).long()  # [F, 2]
    key = log_size[:, 0] * 64 + log_size[:, 1]
    for k in torch.unique(key[keep]).tolist():
        wx, wy = 2 ** (k // 64), 2 ** (k % 64)
        group = torch.nonzero(keep & (key == k))[:, 0]
        ys, xs = torch.meshgrid(torch.arange(wy, device=device), torch.arange(wx, device=device), indexing="ij")
        offsets = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [wy*wx, 2]
        for chunk in torch.split(group, max(1, _CHUNK_PIXELS // (wx * wy))):
            px = lo[chunk][:, None] + offsets[None]  # [T, wy*wx, 2]
            centre = px.to(tri_uv.dtype) + 0.5
            a, b, c = (tri_uv[chunk][:, None, i] for i in range(3))
            area = (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])
            w0 = (b[..., 0] - centre[..., 0]) * (c[..., 1] - centre[..., 1]) - (b[..., 1] - centre[..., 1]) * (c[..., 0] - centre[..., 0])
            w1 = (c[..., 0] - centre[..., 0]) * (a[..., 1] - centre[..., 1]) - (c[..., 1] - centre[..., 1]) * (a[..., 0] - centre[..., 0])
            # Dividing by the signed area makes the barycentrics of either winding positive inside.
            safe = torch.where(area.abs() < 1e-12, torch.ones_like(area), area)
            l0, l1 = w0 / safe, w1 / safe
            l2 = 1 - l0 - l1
            inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (area.abs() >= 1e-12)
            inside &= (px[..., 0] < width) & (px[..., 1] < height)  # the window may overhang hi (lo is >= 0)
            t_idx, p_idx = torch.nonzero(inside, as_tuple=True)
            flat = px[t_idx, p_idx, 1] * width + px[t_idx, p_idx, 0]
            yield chunk[t_idx], flat, torch.stack([l0[t_idx, p_idx], l1[t_idx, p_idx], l2[t_idx, p_idx]], -1)
