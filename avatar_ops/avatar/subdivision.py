"""A body mesh cut finer for its colour field.

The body's own vertices lie about two centimetres apart on the torso, coarser than a hem, a belt
or a collar: a colour field on them blurs such a band over its neighbours' rows, both where the
photo is read onto the surface and where the field is interpolated back onto the Gaussians. One
midpoint subdivision (each triangle cut into four at its edges' midpoints) halves that spacing
without moving the surface, so the z-buffer, visibility and every surface point stay as they are.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from avatar_ops.avatar.visibility import MeshView
from avatar_ops.body.parts import BodyParts
from avatar_ops.render.mesh import Fragments


@dataclasses.dataclass
class Subdivision:
    """One midpoint subdivision of a triangle mesh.

    Attributes:
        faces: [4F, 3] the finer mesh's faces. Face f's children are 4f (at its corner 0),
            4f + 1 (corner 1), 4f + 2 (corner 2) and 4f + 3 (the middle).
        edges: [E, 2] the coarse mesh's edges (sorted corners); vertex V + e of the finer mesh is
            edge e's midpoint.
        coarse_vertices: V, the coarse mesh's vertex count (its vertices come first, unchanged).
    """

    faces: Tensor
    edges: Tensor
    coarse_vertices: int

    @classmethod
    def of(cls, faces: Tensor, num_vertices: int) -> Subdivision:
        """The subdivision of the mesh of ``num_vertices`` vertices and [F, 3] ``faces``."""
        num = num_vertices
        pairs = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 1)  # [F, 3, 2]
        edges, index = torch.unique(pairs.sort(-1).values.reshape(-1, 2), dim=0, return_inverse=True)
        mid = num + index.reshape(-1, 3)  # [F, 3]: midpoints of edges (0,1), (1,2), (2,0)
        m01, m12, m20 = mid.unbind(1)
        v0, v1, v2 = faces.unbind(1)
        children = torch.stack(
            [torch.stack([v0, m01, m20], 1), torch.stack([m01, v1, m12], 1), torch.stack([m20, m12, v2], 1), torch.stack([m01, m12, m20], 1)], 1
        )  # [F, 4, 3]
        return cls(faces=children.reshape(-1, 3), edges=edges, coarse_vertices=num)

    def vertices(self, vertices: Tensor) -> Tensor:
        """[..., V, 3] coarse per-vertex values -> [..., V + E, 3] the finer mesh's (midpoints
        take their edge's mean)."""
        mid = 0.5 * (vertices[..., self.edges[:, 0], :] + vertices[..., self.edges[:, 1], :])
        return torch.cat([vertices, mid], -2)

    def labels(self, parts: BodyParts) -> BodyParts:
        """Per-vertex part labels of the finer mesh: a midpoint takes its edge's first (lower
        numbered) corner's."""
        first = self.edges[:, 0]
        return BodyParts(
            part=torch.cat([parts.part, parts.part[first]]), side=torch.cat([parts.side, parts.side[first]]), joint=torch.cat([parts.joint, parts.joint[first]])
        )

    def face_labels(self, face_values: Tensor) -> Tensor:
        """[F, ...] per-face values of the coarse mesh -> [4F, ...] (children take their parent's)."""
        return face_values.repeat_interleave(4, 0)

    def locate(self, face: Tensor, bary: Tensor) -> tuple[Tensor, Tensor]:
        """Points given as coarse ``face`` [...] and barycentrics ``bary`` [..., 3] -> the same
        points as a finer face [...] and barycentrics in it [..., 3]."""
        a, b, c = bary.unbind(-1)
        # A corner's child holds the points whose barycentric for that corner is at least 1/2;
        # the middle child the rest.
        child = torch.full_like(face, 3)
        child = torch.where(c >= 0.5, torch.full_like(face, 2), child)
        child = torch.where(b >= 0.5, torch.ones_like(face), child)
        child = torch.where(a >= 0.5, torch.zeros_like(face), child)
        corner0 = torch.stack([2 * a - 1, 2 * b, 2 * c], -1)  # (v0, m01, m20)
        corner1 = torch.stack([2 * a, 2 * b - 1, 2 * c], -1)  # (m01, v1, m12)
        corner2 = torch.stack([2 * a, 2 * b, 2 * c - 1], -1)  # (m20, m12, v2)
        middle = torch.stack([1 - 2 * c, 1 - 2 * a, 1 - 2 * b], -1)  # (m01, m12, m20)
        options = torch.stack([corner0, corner1, corner2, middle], -2)  # [..., 4, 3]
        fine_bary = torch.gather(options, -2, child[..., None, None].expand(*child.shape, 1, 3)).squeeze(-2)
        return 4 * face + child, fine_bary.clamp(0, 1)

    def view(self, view: MeshView) -> MeshView:
        """The coarse mesh's z-buffer as the finer mesh's (the same surface: only each pixel's
        face and barycentrics change)."""
        frags = view.frags
        hit = frags.face >= 0
        face, bary = self.locate(frags.face.clamp(min=0), frags.bary)
        face = torch.where(hit, face, frags.face)
        bary = torch.where(hit[..., None], bary, frags.bary)
        return dataclasses.replace(view, frags=Fragments(face=face, bary=bary, depth=frags.depth))
