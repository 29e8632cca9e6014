"""A body of known appearance photographed from the front: the photo, its mask and the true track,
so reconstruction and fitting can be checked against what they should give."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from avatar_ops.avatar.visibility import vertex_normals
from avatar_ops.body.base import BodyModel, zero_pose
from avatar_ops.body.parts import Part, body_parts, head_regions
from avatar_ops.body.rotations import axis_angle_to_matrix
from avatar_ops.render.camera import intrinsics_for, project
from avatar_ops.render.mesh import rasterize_mesh
from avatar_ops.tracking.operator import TrackResult

SHIRT = (0.80, 0.12, 0.12)
PRINT = (0.95, 0.85, 0.10)
TROUSERS = (0.12, 0.22, 0.70)
SKIN = (0.85, 0.64, 0.50)
HAIR = (0.22, 0.13, 0.07)
SHOES = (0.10, 0.10, 0.10)
PALETTE = (SHIRT, PRINT, TROUSERS, SKIN, HAIR, SHOES)


@dataclasses.dataclass
class Photo:
    """``rgb`` [H, W, 3] uint8, ``mask`` [H, W] bool, the true ``track``, the vertex colours the
    body was painted with [V, 3] and its rest-pose vertices [V, 3]."""

    rgb: np.ndarray
    mask: np.ndarray
    track: TrackResult
    colours: torch.Tensor
    rest: torch.Tensor


def painted(body: BodyModel, with_print: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertex colours: a shirt over torso and upper arms (a print on its front), trousers on the
    legs, shoes, skin, hair on the scalp. Returns the colours [V, 3] and rest vertices [V, 3]."""
    with torch.no_grad():
        rest = body(body.default_shape()[None], zero_pose(1))
    v = rest.vertices[0]
    parts = body_parts(body)
    _face, scalp = head_regions(v, rest.keypoints[0], parts, vertex_normals(v, body.faces))
    colour = torch.tensor(SKIN).expand(len(v), 3).clone()
    p = parts.part
    colour[(p == Part.TORSO) | (p == Part.UPPER_ARM)] = torch.tensor(SHIRT)
    colour[(p == Part.THIGH) | (p == Part.SHIN)] = torch.tensor(TROUSERS)
    lower_torso = (p == Part.TORSO) & (v[:, 1] < 0.02)
    colour[lower_torso] = torch.tensor(TROUSERS)
    colour[p == Part.FOOT] = torch.tensor(SHOES)
    colour[scalp & (p == Part.HEAD)] = torch.tensor(HAIR)
    if with_print:
        chest = (p == Part.TORSO) & (v[:, 2] > 0.05) & ((v[:, 0] ** 2 + (v[:, 1] - 0.3) ** 2) < 0.07**2)
        colour[chest] = torch.tensor(PRINT)
    return colour, v


def photograph(
    body: BodyModel, colours: torch.Tensor, size: int = 384, background=(0.0, 0.0, 0.0), pose: torch.Tensor | None = None, facing_away: bool = False,
    paint: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Photo:
    """The painted body at 3 m in front of a camera, facing it (or turned away from it), arms
    lowered unless ``pose`` is given, rendered by the mesh rasteriser 2x supersampled, on ``background``.
    ``paint`` (rest-pose surface points [..., 3], their interpolated colours [..., 3] -> colours)
    paints finer than the mesh's vertices: a band with crisp edges."""
    if pose is None:
        pose = zero_pose(1)
        pose[0, 16, 2], pose[0, 17, 2] = -1.2, 1.2  # shoulders down into an A-pose
    pose = pose.clone()
    # y up, facing +z -> the camera's y down, facing it (turned half round about its vertical axis: away).
    pose[0, 0] = torch.tensor([0.0, 0.0, math.pi] if facing_away else [math.pi, 0.0, 0.0])
    shape = body.default_shape()[None]
    with torch.no_grad():
        out = body(shape, pose)
        pelvis = out.joints[0, 0]
    transl = torch.tensor([[0.0, 0.0, 3.0]]) - pelvis
    with torch.no_grad():
        out = body(shape, pose, transl)
    k = torch.from_numpy(intrinsics_for(size, size, 1.2))
    ss = 2
    k2 = k.clone()
    k2[:2] *= ss
    frags = rasterize_mesh(out.vertices[0], body.faces, k2, size * ss, size * ss)
    col = frags.interpolate(colours, body.faces)
    if paint is not None:
        with torch.no_grad():
            rest = body(shape, zero_pose(1)).vertices[0]
        col = paint(frags.interpolate(rest, body.faces), col)
    bg = torch.tensor(background, dtype=torch.float32)
    image = torch.where(frags.mask[..., None], col, bg)
    pool = lambda t: torch.nn.functional.avg_pool2d(t.permute(2, 0, 1)[None], ss)[0].permute(1, 2, 0)
    rgb = (pool(image).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    mask = (pool(frags.mask.float()[..., None])[..., 0] > 0.5).numpy()
    kp2 = project(out.keypoints, k[None])[0].numpy()
    keypoints = np.concatenate([kp2, np.ones((len(kp2), 1))], 1).astype(np.float32)
    track = TrackResult(
        body_model=body.name, shape=shape[0].numpy(), pose=pose[0].numpy(), transl=transl[0].numpy(), intrinsics=k.numpy(),
        width=size, height=size, keypoints=keypoints, projected_keypoints=kp2, mask=mask, num_people=1, quality={},
    )  # fmt: skip
    return Photo(rgb=rgb, mask=mask, track=track, colours=colours, rest=body(shape, zero_pose(1)).vertices[0].detach())


def rotation_y(angle: float) -> torch.Tensor:
    """[3, 3] rotation about the vertical axis."""
    return axis_angle_to_matrix(torch.tensor([0.0, angle, 0.0]))


@dataclasses.dataclass
class BenchShot:
    """A quality-benchmark subject photographed as the benchmark photographs it: ``rgb`` [H, W, 3]
    uint8 and ``alpha`` [H, W] uint8 (the RGBA cut-out), its true ``track`` (camera-frame body,
    the true 2D keypoints with confidence 1), the camera-frame ``keypoints`` [K, 3] in metres and
    the shaped body's ``rest`` vertices [V, 3]."""

    subject: object
    rgb: np.ndarray
    alpha: np.ndarray
    track: TrackResult
    keypoints: torch.Tensor
    rest: torch.Tensor


def bench_shot(body: BodyModel, index: int, start_deg: float = 0.0, size: int = 512) -> BenchShot:
    """Subject ``index`` of ``bench/subjects.py``'s consistent set, 3 m from a camera at its
    pelvis's height, in front of it (``start_deg`` 180: behind it), with the tracker's focal length."""
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from subjects import Texture, make_subjects, posed_in_camera, render_truth

    from avatar_ops.render.camera import orbit_cameras
    from avatar_ops.tracking.smplify import BodyFitConfig

    subject = make_subjects(body, index + 1)[index]
    with torch.no_grad():
        pelvis = body(subject.shape, subject.pose).joints[0, 0]
    fov = math.degrees(2 * math.atan(0.5 / BodyFitConfig().focal_factor))
    camera = orbit_cameras(1, pelvis, 3.0, 0.0, size, fov_deg=fov, start_deg=start_deg)
    rgb, mask = render_truth(body, Texture(body, subject), subject.shape, subject.pose, camera)
    pose, transl = posed_in_camera(body, subject.shape, subject.pose, camera.viewmats[0])
    with torch.no_grad():
        keypoints = body(subject.shape, pose, transl).keypoints[0]
        rest = body(subject.shape, torch.zeros_like(pose)).vertices[0]
    uv = project(keypoints[None], camera.Ks[:1])[0]
    seen = torch.cat([uv, torch.ones(len(uv), 1)], 1).numpy().astype(np.float32)
    track = TrackResult(
        body_model=body.name, shape=subject.shape[0].numpy(), pose=pose[0].numpy(), transl=transl[0].numpy(),
        intrinsics=camera.Ks[0].numpy().astype(np.float32), width=size, height=size, keypoints=seen, projected_keypoints=seen[:, :2],
        mask=mask[0].numpy(), num_people=1, quality={},
    )  # fmt: skip
    return BenchShot(subject, (rgb[0].numpy() * 255).round().astype(np.uint8), mask[0].numpy().astype(np.uint8) * 255, track, keypoints, rest)
