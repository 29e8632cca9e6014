"""A Gaussian avatar bound to a parametric body mesh.

Each Gaussian lives on one triangle of the body: barycentric coordinates, an offset along the
triangle's normal, and a rotation expressed in the triangle's frame. Posing the body (linear blend
skinning of its vertices) moves and turns the triangles, and the Gaussians with them.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from avatar_ops.body.base import BodyModel
from avatar_ops.body.rotations import matrix_to_quaternion, quaternion_to_matrix
from avatar_ops.render.camera import Cameras
from avatar_ops.render.gaussians import Render, rasterize

# Avatars render with gsplat's anti-aliased mode: a Gaussian seen edge-on (the body's outline)
# covers only as much as it would without the low-pass filter, so outlines stay as tight as the
# surface they sit on, at every image size.
RASTERIZE_MODE = "antialiased"


def triangle_frames(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """[B, V, 3] vertices -> per-face [B, F, 3, 3] frames (columns: edge, bitangent, normal) and
    [B, F] areas."""
    v0, v1, v2 = (vertices[:, faces[:, i]] for i in range(3))
    e1, e2 = v1 - v0, v2 - v0
    cross = torch.linalg.cross(e1, e2, dim=-1)
    area = 0.5 * cross.norm(dim=-1)
    normal = cross / cross.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    tangent = e1 / e1.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    bitangent = torch.linalg.cross(normal, tangent, dim=-1)
    return torch.stack([tangent, bitangent, normal], -1), area


def body_surface(body: BodyModel, shape: Tensor, pose: Tensor, transl: Tensor | None = None, expression: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """[B, S] shapes in [B, 55, 3] poses (and [B, E] expressions, neutral when None) -> the posed
    body's [B, V, 3] vertices and [B, F, 3, 3] face frames, in one forward pass of the body (the
    bodies may be different subjects)."""
    out = body(shape, pose, transl, expression)
    frames, _ = triangle_frames(out.vertices, body.faces)
    return out.vertices, frames


@dataclasses.dataclass
class GaussianAvatar:
    """Gaussians bound to a body.

    Attributes:
        body_model: ``anny`` or ``smplx`` (the body the avatar was built on).
        shape: [S] the subject's body shape.
        face: [N] parent triangle of each Gaussian.
        bary: [N, 3] barycentric coordinates in it.
        offset: [N] metres along the triangle's normal.
        rotation: [N, 4] quaternion (w, x, y, z) in the triangle's frame.
        log_scale: [N, 3] log standard deviations (metres) along the rotated axes.
        opacity_logit: [N] opacity before the sigmoid.
        color: [N, 3] linear RGB in [0, 1].
        source_pose, source_transl, source_K, width, height: the photo's fitted pose (camera
            frame, SMPL-X axis-angle), translation and camera.
    """

    body_model: str
    shape: Tensor
    face: Tensor
    bary: Tensor
    offset: Tensor
    rotation: Tensor
    log_scale: Tensor
    opacity_logit: Tensor
    color: Tensor
    source_pose: Tensor
    source_transl: Tensor
    source_K: Tensor
    width: int
    height: int

    TENSORS = ("shape", "face", "bary", "offset", "rotation", "log_scale", "opacity_logit", "color", "source_pose", "source_transl", "source_K")

    def __len__(self) -> int:
        return int(self.face.shape[0])

    def to(self, device) -> GaussianAvatar:
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in self.TENSORS})

    def detach(self) -> GaussianAvatar:
        return dataclasses.replace(self, **{k: getattr(self, k).detach().clone() for k in self.TENSORS})

    def surface(self, body: BodyModel, pose: Tensor, transl: Tensor | None = None, expression: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Each Gaussian's parent triangle under [B, 55, 3] poses (and [B, E] expressions):
        corners [B, N, 3, 3] and frames [B, N, 3, 3] (columns: tangent, bitangent, normal). They
        depend on the pose only, not on the Gaussians' own parameters, so a fit computes them once
        per view."""
        self.check_body(body)
        return self.triangles(body, *body_surface(body, self.shape[None].expand(pose.shape[0], -1), pose, transl, expression))

    def check_body(self, body: BodyModel) -> None:
        """Raise unless ``body`` is the kind of body this avatar was built on."""
        if body.name != self.body_model:
            raise ValueError(f"This avatar was built on the {self.body_model!r} body, got a {body.name!r} body.")

    def triangles(self, body: BodyModel, vertices: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """The parent triangles' corners and frames out of a posed body's [B, V, 3] vertices and
        [B, F, 3, 3] face frames (:func:`body_surface`)."""
        return vertices[:, body.faces[self.face]], frames[:, self.face]

    def gaussians_on(self, corners: Tensor, frame: Tensor) -> dict[str, Tensor]:
        """World-space Gaussians on triangles from :meth:`surface`: ``means`` [B, N, 3], ``quats``
        [B, N, 4], ``scales`` [N, 3], ``opacities`` [N], ``colors`` [N, 3]."""
        means = (self.bary[None, :, :, None] * corners).sum(2) + self.offset[None, :, None] * frame[..., 2]
        quats = matrix_to_quaternion(frame @ quaternion_to_matrix(self.rotation)[None])
        return {
            "means": means, "quats": quats, "scales": self.log_scale.exp(),
            "opacities": torch.sigmoid(self.opacity_logit), "colors": self.color.clamp(0, 1),
        }  # fmt: skip

    def posed(self, body: BodyModel, pose: Tensor, transl: Tensor | None = None, expression: Tensor | None = None) -> dict[str, Tensor]:
        """World-space Gaussians for [B, 55, 3] poses and [B, E] expressions (see :meth:`gaussians_on`)."""
        return self.gaussians_on(*self.surface(body, pose, transl, expression))

    def render(self, body: BodyModel, pose: Tensor, transl: Tensor | None, cameras: Cameras, background: Tensor | None = None, expression: Tensor | None = None) -> Render:
        """Render pose b into camera b (``len(cameras) == B``), or one pose into every camera."""
        g = self.posed(body, pose, transl, expression)
        if pose.shape[0] == 1:
            return rasterize(g["means"][0], g["quats"][0], g["scales"], g["opacities"], g["colors"], cameras, background, rasterize_mode=RASTERIZE_MODE)
        if pose.shape[0] != len(cameras):
            raise ValueError(f"{pose.shape[0]} poses need 1 or {pose.shape[0]} cameras, got {len(cameras)}.")
        renders = [
            rasterize(g["means"][b], g["quats"][b], g["scales"], g["opacities"], g["colors"], cameras[b : b + 1], background, rasterize_mode=RASTERIZE_MODE)
            for b in range(pose.shape[0])
        ]
        return Render(*(torch.cat([getattr(r, f) for r in renders]) for f in ("rgb", "alpha", "depth")))

    def source_camera(self, scale: float = 1.0) -> Cameras:
        """The photo's camera (at the origin), images ``scale`` times the photo's size."""
        return Cameras(torch.eye(4, device=self.source_K.device)[None], self.source_K[None].clone(), self.width, self.height).scaled(scale)
