"""SMPL-X motion clips: loading AMASS-style ``.npz`` files and the clips bundled with the package.

A clip file holds either ``poses`` [T, 3 * J] (J >= 22: global orient then body joints, then
optionally jaw/eyes/hands in SMPL-X order) or ``global_orient`` [T, 3] and ``body_pose``
[T, 63]; ``trans`` [T, 3] (optional, metres); ``mocap_framerate`` (optional, default 30) and
``up_axis`` (optional, ``y`` as SMPL-X or ``z`` as AMASS; z-up clips are turned y-up on load).
Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import torch

from avatar_ops.body.base import NUM_POSE_JOINTS
from avatar_ops.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle

CLIPS_DIR = Path(__file__).parent / "clips"


@dataclasses.dataclass
class Motion:
    """pose [T, 55, 3] SMPL-X axis-angle (y up, facing +z), transl [T, 3], fps."""

    pose: torch.Tensor
    transl: torch.Tensor
    fps: float

    def __len__(self) -> int:
        return int(self.pose.shape[0])


def bundled_clips() -> list[str]:
    """Names of the clips shipped with the package."""
    return sorted(p.stem for p in CLIPS_DIR.glob("*.npz"))


def load_motion(source: str | bytes | Path, max_frames: int = 10_000) -> Motion:
    """A bundled clip by name, a ``.npz`` path, or the bytes of one (an upload)."""
    if isinstance(source, str) and source in bundled_clips():
        source = CLIPS_DIR / f"{source}.npz"
    if isinstance(source, bytes):
        handle = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ValueError(f"`motion` must be a bundled clip ({', '.join(bundled_clips())}) or an existing .npz file, got {str(source)!r}.")
        handle = path
    try:
        with np.load(handle, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
        keys = set(data)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"`motion` is not a readable .npz file (pickled objects are refused): {err}") from err
    if "poses" in keys:
        poses = np.asarray(data["poses"], dtype=np.float32)
        if poses.ndim != 2 or poses.shape[1] % 3 or poses.shape[1] < 66:
            raise ValueError(f"`poses` must be [T, 3 * J] with J >= 22, got {list(poses.shape)}.")
        joints = poses.reshape(len(poses), -1, 3)[:, :NUM_POSE_JOINTS]
    elif {"global_orient", "body_pose"} <= keys:
        orient = np.asarray(data["global_orient"], dtype=np.float32).reshape(-1, 1, 3)
        body = np.asarray(data["body_pose"], dtype=np.float32).reshape(len(orient), -1, 3)
        if body.shape[1] != 21:
            raise ValueError(f"`body_pose` must be [T, 63] (21 joints), got {list(data['body_pose'].shape)}.")
        joints = np.concatenate([orient, body], 1)
    else:
        raise ValueError(f"a motion .npz needs `poses` or `global_orient` + `body_pose`; it has {sorted(keys)}.")
    frames = len(joints)
    if not 1 <= frames <= max_frames:
        raise ValueError(f"a motion must have 1 to {max_frames} frames, got {frames}.")
    pose = np.zeros((frames, NUM_POSE_JOINTS, 3), np.float32)
    pose[:, : joints.shape[1]] = joints
    trans = np.asarray(data["trans"], dtype=np.float32) if "trans" in keys else np.zeros((frames, 3), np.float32)
    if trans.shape != (frames, 3):
        raise ValueError(f"`trans` must be [T, 3] = [{frames}, 3], got {list(trans.shape)}.")
    if not (np.isfinite(pose).all() and np.isfinite(trans).all()):
        raise ValueError("the motion holds NaN or infinite values.")
    fps = float(data["mocap_framerate"]) if "mocap_framerate" in keys else 30.0
    up = str(data["up_axis"]) if "up_axis" in keys else "y"
    pose_t, trans_t = torch.from_numpy(pose), torch.from_numpy(trans)
    if up == "z":
        to_y = axis_angle_to_matrix(torch.tensor([-math.pi / 2, 0.0, 0.0]))
        pose_t[:, 0] = matrix_to_axis_angle(to_y @ axis_angle_to_matrix(pose_t[:, 0]))
        trans_t = trans_t @ to_y.T
    elif up != "y":
        raise ValueError(f"`up_axis` must be 'y' or 'z', got {up!r}.")
    return Motion(pose=pose_t, transl=trans_t, fps=fps)
