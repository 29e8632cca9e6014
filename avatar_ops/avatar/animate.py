"""Rendering an avatar in new poses and around an orbit, in the body's canonical frame (y up,
facing +z, pelvis near the origin)."""

from __future__ import annotations

import numpy as np
import torch

from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BodyModel
from avatar_ops.io.image import to_uint8
from avatar_ops.motion import Motion
from avatar_ops.render.camera import Cameras, orbit_cameras


def canonical_pose(avatar: GaussianAvatar) -> torch.Tensor:
    """[1, 55, 3] the photo's pose, upright and facing +z (global orientation removed)."""
    pose = avatar.source_pose.clone()[None]
    pose[:, 0] = 0.0
    return pose


def _centre(avatar: GaussianAvatar, body: BodyModel, pose: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        joints = body(avatar.shape[None], pose[:1]).joints[0]
    return joints[0]


def turntable(avatar: GaussianAvatar, body: BodyModel, n_views: int = 24, size: int = 256, elevation_deg: float = 5.0, distance: float = 3.2, background=None) -> tuple[np.ndarray, Cameras]:
    """[n_views, size, size, 3] uint8 frames of the avatar in its photo pose on an orbit, and the cameras."""
    pose = canonical_pose(avatar)
    cams = orbit_cameras(n_views, _centre(avatar, body, pose), distance, elevation_deg, size)
    return render_frames(avatar, body, pose, torch.zeros(1, 3), cams, background), cams


def played_motion(avatar: GaussianAvatar, motion: Motion, max_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_frames`` (all when None) of ``motion`` as the avatar plays it: [T, 55, 3]
    poses whose hands keep the photo's pose (clips carry none), as does the jaw unless the clip
    drives it, and [T, 3] translations from the first frame's, on the clip's device."""
    pose, transl = motion.pose[:max_frames].clone(), motion.transl[:max_frames]
    pose[:, 25:] = avatar.source_pose[25:].to(pose.device)
    if not motion.drives_jaw:
        pose[:, 22] = avatar.source_pose[22].to(pose.device)
    return pose, transl - transl[:1]


def played_expression(body: BodyModel, motion: Motion, max_frames: int | None = None) -> torch.Tensor | None:
    """[T, E] the clip's expression for ``body`` (its first E coefficients, zero-padded: SMPL-X's
    expression spaces are nested), or None when the clip or the body has none."""
    if motion.expression is None or body.num_expression_coeffs == 0:
        return None
    clip = motion.expression[:max_frames]
    out = torch.zeros(len(clip), body.num_expression_coeffs, dtype=clip.dtype, device=clip.device)
    n = min(clip.shape[1], body.num_expression_coeffs)
    out[:, :n] = clip[:, :n]
    return out


def animate(avatar: GaussianAvatar, body: BodyModel, motion: Motion, size: int = 256, distance: float = 3.2, max_frames: int | None = None, background=None) -> np.ndarray:
    """[T, size, size, 3] uint8 frames of the avatar following ``motion`` (camera fixed in front)."""
    pose, transl = played_motion(avatar, motion, max_frames)
    pose, transl = pose.to(avatar.shape.device), transl.to(avatar.shape.device)
    expression = played_expression(body, motion, max_frames)
    target = _centre(avatar, body, pose)
    cams = orbit_cameras(1, target, distance, 5.0, size)
    cams = Cameras(cams.viewmats.expand(len(pose), 4, 4).clone(), cams.Ks.expand(len(pose), 3, 3).clone(), size, size)
    return render_frames(avatar, body, pose, transl, cams, background, expression=None if expression is None else expression.to(avatar.shape.device))


def render_frames(
    avatar: GaussianAvatar, body: BodyModel, pose: torch.Tensor, transl: torch.Tensor, cams: Cameras, background=None, chunk: int = 8, expression: torch.Tensor | None = None,
) -> np.ndarray:
    background = torch.ones(3) if background is None else torch.as_tensor(background, dtype=torch.float32)
    frames = []
    with torch.no_grad():
        for start in range(0, len(cams), chunk):
            sl = slice(start, start + chunk)
            p = pose if pose.shape[0] == 1 else pose[sl]
            t = transl if transl.shape[0] == 1 else transl[sl]
            e = None if expression is None else expression[sl]
            out = avatar.render(body, p, t, cams[sl], background.to(p.device), expression=e)
            frames.append(to_uint8(out.rgb))
    return np.concatenate(frames)


def animation_bytes(avatar_uri: str, body: BodyModel, motion: str | bytes, fmt: str, size: int, max_frames: int) -> bytes:
    """The stored avatar at ``avatar_uri`` following ``motion`` (a bundled clip's name or SMPL-X
    ``.npz`` bytes), encoded as ``gif`` or ``mp4``."""
    from avatar_ops.avatar.bundle import avatar_from_bytes
    from avatar_ops.io import storage
    from avatar_ops.io.media import gif_bytes, mp4_bytes
    from avatar_ops.motion import bundled_clips, load_motion

    if fmt not in ("gif", "mp4"):
        raise ValueError(f"`fmt` must be 'gif' or 'mp4', got {fmt!r}.")
    if isinstance(motion, str) and motion not in bundled_clips():
        raise ValueError(f"`motion` must be a bundled clip ({', '.join(bundled_clips())}) or .npz bytes, got {motion!r}.")
    avatar = avatar_from_bytes(storage.read_bytes(avatar_uri)).to(body.device)
    clip = load_motion(motion)
    frames = animate(avatar, body, clip, size=size, max_frames=max_frames)
    fps = min(clip.fps, 30.0)
    return gif_bytes(frames, fps=fps) if fmt == "gif" else mp4_bytes(frames, fps=fps)
