"""Appearance hints of a reconstructed avatar for new views and new poses (GAS step 1).

Per target frame: the colour render, a normal map (camera-space normals of the Gaussians' thin
axes, encoded to [0, 1]), expected depth and the alpha mask. Two kinds of targets:

- *views*: an orbit of N cameras around the subject in its photo pose (elevation configurable);
- *poses*: an SMPL-X motion clip, the camera fixed in front of the first frame or following the
  body's root.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from avatar_ops.avatar.animate import canonical_pose
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BodyModel
from avatar_ops.body.rotations import quaternion_to_matrix
from avatar_ops.motion import Motion
from avatar_ops.render.camera import Cameras, look_at, orbit_cameras
from avatar_ops.render.gaussians import rasterize
from avatar_ops.types import SynthesisKind


@dataclasses.dataclass
class Hints:
    """Hint frames and the targets they show.

    Attributes:
        rgb: [T, H, W, 3] float in [0, 1] (over ``background``).
        normal: [T, H, W, 3] camera-space normals encoded as (n + 1) / 2, background 0.5 grey.
        depth: [T, H, W] expected depth in metres (0 where empty).
        mask: [T, H, W] alpha in [0, 1].
        cameras: T cameras.
        pose: [T, 55, 3] body pose per frame; transl [T, 3].
        kind: ``view`` or ``pose``.
    """

    rgb: Tensor
    normal: Tensor
    depth: Tensor
    mask: Tensor
    cameras: Cameras
    pose: Tensor
    transl: Tensor
    kind: SynthesisKind

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


def _centre(avatar: GaussianAvatar, body: BodyModel, pose: Tensor, transl: Tensor) -> Tensor:
    """[T, 3] middle of the posed body's bounding box."""
    with torch.no_grad():
        verts = body(avatar.shape[None].expand(len(pose), -1), pose, transl).vertices
    return (verts.amin(1) + verts.amax(1)) / 2


def view_targets(avatar: GaussianAvatar, body: BodyModel, n_views: int, size: int, elevation_deg: float = 5.0, distance: float = 3.2) -> tuple[Tensor, Tensor, Cameras]:
    """The photo pose (upright, canonical facing) seen from ``n_views`` cameras on an orbit."""
    pose = canonical_pose(avatar)
    transl = torch.zeros(1, 3, device=pose.device)
    cams = orbit_cameras(n_views, _centre(avatar, body, pose, transl)[0].cpu(), distance, elevation_deg, size).to(pose.device)
    return pose.expand(n_views, -1, -1).clone(), transl.expand(n_views, -1).clone(), cams


def pose_targets(avatar: GaussianAvatar, body: BodyModel, motion: Motion, size: int, num_frames: int, camera: Literal["fixed", "follow"] = "fixed", distance: float = 3.2) -> tuple[Tensor, Tensor, Cameras]:
    """The first ``num_frames`` of ``motion`` (hands keep the photo's pose), seen from the front:
    a ``fixed`` camera aimed at the first frame, or one that ``follow``s the body's centre."""
    dev = avatar.shape.device
    pose, transl = motion.pose[:num_frames].clone().to(dev), motion.transl[:num_frames].to(dev)
    pose[:, 25:] = avatar.source_pose[25:]
    transl = transl - transl[:1]
    centres = _centre(avatar, body, pose, transl).cpu()
    if camera not in ("fixed", "follow"):
        raise ValueError(f"`camera` must be 'fixed' or 'follow', got {camera!r}.")
    targets = centres[:1].expand(len(pose), 3) if camera == "fixed" else centres
    base = orbit_cameras(1, targets[0], distance, 5.0, size)
    eye_offset = torch.linalg.inv(base.viewmats[0])[:3, 3] - targets[0]
    views = torch.stack([look_at(t + eye_offset, t) for t in targets])
    return pose, transl, Cameras(views, base.Ks.expand(len(pose), 3, 3).clone(), size, size).to(dev)


def render_hints(
    avatar: GaussianAvatar, body: BodyModel, pose: Tensor, transl: Tensor, cameras: Cameras, kind: SynthesisKind, background: float = 1.0, chunk: int = 8
) -> Hints:
    """Render colour, normals, depth and mask of pose t into camera t."""
    if len(pose) != len(cameras):
        raise ValueError(f"{len(pose)} poses need {len(pose)} cameras, got {len(cameras)}.")
    rgbs, normals, depths, masks = [], [], [], []
    bg = torch.full((3,), float(background), device=pose.device)
    with torch.no_grad():
        for start in range(0, len(pose), chunk):
            sl = slice(start, start + chunk)
            g = avatar.posed(body, pose[sl], transl[sl])
            for b in range(g["means"].shape[0]):
                cam = cameras[start + b : start + b + 1]
                out = rasterize(g["means"][b], g["quats"][b], g["scales"], g["opacities"], g["colors"], cam, bg)
                thin_axis = quaternion_to_matrix(g["quats"][b])[..., :, 2]  # [N, 3] world
                cam_normal = thin_axis @ cam.viewmats[0, :3, :3].T
                # Face the camera (the thin axis has no inside/outside of its own).
                cam_normal = torch.where((cam_normal[:, 2:3] > 0), -cam_normal, cam_normal)
                encoded = rasterize(g["means"][b], g["quats"][b], g["scales"], g["opacities"], (cam_normal + 1) / 2, cam, torch.full((3,), 0.5, device=pose.device))
                rgbs.append(out.rgb[0])
                normals.append(encoded.rgb[0])
                depths.append(out.depth[0, ..., 0])
                masks.append(out.alpha[0, ..., 0])
    return Hints(
        rgb=torch.stack(rgbs).clamp(0, 1), normal=torch.stack(normals).clamp(0, 1), depth=torch.stack(depths), mask=torch.stack(masks).clamp(0, 1),
        cameras=cameras, pose=pose, transl=transl, kind=kind,
    )  # fmt: skip
