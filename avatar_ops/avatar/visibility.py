"""What a camera sees of a body: a rasterised mesh z-buffer, per-point visibility and facing.

Visibility is decided against the z-buffer of the posed mesh itself (not of sampled points), so a
surface point is visible exactly when nothing of the body lies in front of it at its pixel.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from avatar_ops.render.mesh import Fragments, rasterize_mesh


@dataclasses.dataclass
class MeshView:
    """The posed mesh rasterised in one camera, at a reduced resolution.

    Attributes:
        frags: the z-buffer (face, barycentrics, depth per pixel) at ``width`` x ``height``.
        K: [3, 3] intrinsics at that resolution.
        scale: z-buffer pixels per image pixel.
    """

    frags: Fragments
    K: Tensor
    width: int
    height: int
    scale: float

    def pixels(self, points: Tensor) -> Tensor:
        """[N, 3] camera-frame points -> [N, 2] z-buffer pixel coordinates (continuous)."""
        z = points[:, 2:3].clamp(min=1e-3)
        return points[:, :2] / z * torch.stack([self.K[0, 0], self.K[1, 1]]) + self.K[:2, 2]

    def visible(self, points: Tensor, normals: Tensor, tolerance: float = 0.015, min_facing: float = 0.0) -> tuple[Tensor, Tensor]:
        """Which surface points the camera sees, and how squarely.

        Args:
            points: [N, 3] camera-frame points on the mesh surface.
            normals: [N, 3] their outward unit normals.
            tolerance: metres a point may lie behind the z-buffer's depth and still count (more at
                grazing angles, where depth changes fast within a pixel).
            min_facing: the least facing cosine that counts (a little below 0 takes in the
                outline's points, just turned away, that still shape the silhouette).

        Returns:
            visible [N] bool and facing [N]: the cosine between the normal and the direction to
            the camera (1 facing it, 0 edge-on, < 0 turned away).
        """
        facing = -(normals * points / points.norm(dim=1, keepdim=True).clamp(min=1e-9)).sum(1)
        px = self.pixels(points).floor().long()
        inside = (px[:, 0] >= 0) & (px[:, 0] < self.width) & (px[:, 1] >= 0) & (px[:, 1] < self.height) & (points[:, 2] > 0)
        depth = self.frags.depth[px[:, 1].clamp(0, self.height - 1), px[:, 0].clamp(0, self.width - 1)]
        pixel_size = points[:, 2] / self.K[0, 0]
        slack = tolerance + 1.5 * pixel_size / facing.abs().clamp(min=0.2)
        return inside & (facing > min_facing) & (points[:, 2] <= depth + slack), facing

    def shows_own_part(self, points: Tensor, part: Tensor, face_part: Tensor) -> Tensor:
        """[N] bool: the z-buffer at each point's pixel shows a face of the point's own ``part``
        ([N]; ``face_part`` [F] each mesh face's). A hand lying flat on the belly is within any
        depth tolerance of it, so depth alone counts the belly under it as seen, and it would
        read the hand's skin."""
        px = self.pixels(points).floor().long()
        face = self.frags.face[px[:, 1].clamp(0, self.height - 1), px[:, 0].clamp(0, self.width - 1)]
        return (face >= 0) & (face_part[face.clamp(min=0)] == part)


def mesh_view(vertices: Tensor, faces: Tensor, K: Tensor, width: int, height: int, side: int) -> MeshView:
    """Rasterise [V, 3] camera-frame vertices (OpenCV axes, intrinsics [3, 3] for a ``width`` x
    ``height`` image) at ``side`` pixels along the longer side (never above the image's own)."""
    scale = min(1.0, side / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    k = K.clone().to(vertices)
    k[:2] *= torch.tensor([w / width, h / height], dtype=k.dtype, device=k.device)[:, None]
    return MeshView(rasterize_mesh(vertices, faces, k, w, h), k, w, h, scale)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """[..., V, 3] vertices -> [..., V, 3] area-weighted unit vertex normals."""
    v0, v1, v2 = (vertices[..., faces[:, i], :] for i in range(3))
    n = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    out = torch.zeros_like(vertices)
    for i in range(3):
        out = out.index_add(-2, faces[:, i], n)
    return out / out.norm(dim=-1, keepdim=True).clamp(min=1e-12)
