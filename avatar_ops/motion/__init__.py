"""SMPL-X motion clips: loading AMASS-style ``.npz`` files and the clips bundled with the package.

A clip file holds either ``poses`` [T, 3 * J] (22 <= J <= 64: global orient then body joints, then
optionally jaw/eyes/hands in SMPL-X order) or ``global_orient`` [T, 3] and ``body_pose``
[T, 63]; ``trans`` [T, 3] (optional, metres); ``jaw_pose`` [T, 3] (optional: the jaw, over any
in ``poses``) and ``expression`` [T, E] (optional, 1 <= E <= 100 SMPL-X expression coefficients),
so a talking-head clip drives the face of a body that has a jaw and expressions (SMPL-X; Anny has
neither, and its avatars play such a clip's body only); ``mocap_framerate`` (optional, one number
in frames per second, default 30) and ``up_axis`` (optional, ``y`` as SMPL-X or ``z`` as AMASS;
z-up clips are turned y-up on load). Other arrays (``betas``, ``dmpls``, ...) are ignored unread.

Files are uploads from anyone, so they are read through :class:`~avatar_ops.motion.npz.BoundedNpz`:
the zip directory and the ``.npy`` headers are checked against the limits below (and those in
:mod:`avatar_ops.motion.npz`: archive, member and total sizes) before any array data is
decompressed, object arrays are refused, and only the keys above are read.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from avatar_ops.body.base import NUM_POSE_JOINTS
from avatar_ops.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from avatar_ops.motion.npz import ArrayHeader, BoundedNpz, NpzLimits

#: Most frames in a clip (5.5 minutes at 30 fps); longer clips are refused from their headers.
MAX_FRAMES = 10_000
#: Most joints in ``poses`` (SMPL-X has 55, SMPL-H 52).
MAX_POSE_JOINTS = 64
#: ``mocap_framerate`` bounds, frames per second (mocap runs at 30 to 250; below 1 the GIF
#: encoder's frame duration overflows).
MIN_FRAMERATE, MAX_FRAMERATE = 1.0, 1000.0
#: Most expression coefficients per frame (SMPL-X files hold up to 100).
MAX_EXPRESSION = 100
#: The arrays a clip may use; any other is left unread.
CLIP_KEYS = ("poses", "global_orient", "body_pose", "trans", "jaw_pose", "expression", "mocap_framerate", "up_axis")
_JAW = 22

CLIPS_DIR = Path(__file__).parent / "clips"


@dataclasses.dataclass
class Motion:
    """pose [T, 55, 3] SMPL-X axis-angle (y up, facing +z), transl [T, 3], fps; ``drives_jaw``:
    the clip holds the jaw (``poses`` with 23 joints or more, or ``jaw_pose``); ``expression``
    [T, E] or None."""

    pose: torch.Tensor
    transl: torch.Tensor
    fps: float
    drives_jaw: bool = False
    expression: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.pose.shape[0])


def bundled_clips() -> list[str]:
    """Names of the clips shipped with the package."""
    return sorted(p.stem for p in CLIPS_DIR.glob("*.npz"))


def load_motion(source: str | bytes | Path, max_frames: int = MAX_FRAMES, limits: NpzLimits | None = None) -> Motion:
    """A bundled clip by name, a ``.npz`` path, or the bytes of one (an upload).

    Args:
        source: a name from :func:`bundled_clips`, a local ``.npz`` path, or ``.npz`` bytes.
        max_frames: most frames accepted, checked from the headers before any data is read.
        limits: archive size limits; None: the defaults of :mod:`avatar_ops.motion.npz`.

    Returns:
        The clip, y up.

    Raises:
        ValueError: the source is not a clip, exceeds a limit, or holds a malformed field; the
            message names the field, what was expected and what was found.
    """
    if isinstance(source, str) and source in bundled_clips():
        source = CLIPS_DIR / f"{source}.npz"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            clips = ", ".join(bundled_clips())
            raise ValueError(f"`motion` must be a bundled clip ({clips}) or an existing .npz file, got {str(source)!r}.")
        source = path
    elif not isinstance(source, bytes):
        raise TypeError(f"`motion` must be a clip name, a path or .npz bytes, got {type(source).__name__}.")
    with BoundedNpz(source, "motion", limits) as npz:
        headers = _clip_headers(npz, max_frames)
        data = {key: npz.read(header) for key, header in headers.items()}
    frames = headers["poses"].shape[0] if "poses" in headers else headers["global_orient"].shape[0]
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: refused below
        if "poses" in data:
            joints = data["poses"].astype(np.float32).reshape(frames, -1, 3)[:, :NUM_POSE_JOINTS]
        else:
            orient = data["global_orient"].astype(np.float32).reshape(frames, 1, 3)
            joints = np.concatenate([orient, data["body_pose"].astype(np.float32).reshape(frames, 21, 3)], 1)
        trans = data["trans"].astype(np.float32).reshape(frames, 3) if "trans" in data else np.zeros((frames, 3), np.float32)
        expression = data["expression"].astype(np.float32).reshape(frames, -1) if "expression" in data else None
    pose = np.zeros((frames, NUM_POSE_JOINTS, 3), np.float32)
    pose[:, : joints.shape[1]] = joints
    if "jaw_pose" in data:
        with np.errstate(over="ignore", invalid="ignore"):
            pose[:, _JAW] = data["jaw_pose"].astype(np.float32).reshape(frames, 3)
    checked = [("poses" if "poses" in data else "global_orient/body_pose", pose), ("trans", trans)] + ([("expression", expression)] if expression is not None else [])
    for field, values in checked:
        if not np.isfinite(values).all():
            raise ValueError(f"`{field}` must hold finite float32 values, got NaN, infinite or out-of-range ones.")
    fps = _framerate(data["mocap_framerate"]) if "mocap_framerate" in data else 30.0
    up = _up_axis(data["up_axis"]) if "up_axis" in data else "y"
    pose_t, trans_t = torch.from_numpy(pose), torch.from_numpy(trans)
    if up == "z":
        to_y = axis_angle_to_matrix(torch.tensor([-math.pi / 2, 0.0, 0.0]))
        pose_t[:, 0] = matrix_to_axis_angle(to_y @ axis_angle_to_matrix(pose_t[:, 0]))
        trans_t = trans_t @ to_y.T
    drives_jaw = "jaw_pose" in data or joints.shape[1] > _JAW
    return Motion(pose=pose_t, transl=trans_t, fps=fps, drives_jaw=drives_jaw, expression=None if expression is None else torch.from_numpy(expression))


def _clip_headers(npz: BoundedNpz, max_frames: int) -> dict[str, ArrayHeader]:
    """The headers of the arrays the clip uses, checked (dtype, shape, frame count) before any
    data is read."""
    if "poses" in npz:
        used = [k for k in CLIP_KEYS if k in npz and k not in ("global_orient", "body_pose")]
    elif "global_orient" in npz and "body_pose" in npz:
        used = [k for k in CLIP_KEYS if k in npz and k != "poses"]
    else:
        raise ValueError(f"a motion .npz needs `poses` or `global_orient` + `body_pose`; it has {npz.keys}.")
    headers = {key: npz.header(key) for key in used}
    for key, header in headers.items():
        kinds = "US" if key == "up_axis" else "fiu"
        if header.dtype.kind not in kinds:
            expected = "a string" if key == "up_axis" else "numbers"
            raise ValueError(f"`{key}` must hold {expected}, got dtype {header.dtype}.")
    # Per-frame layouts: [T, *per_frame] with prod(per_frame) values, as documented above.
    per_frame = {"global_orient": 3, "body_pose": 63, "trans": 3, "jaw_pose": 3}
    if "poses" in headers:
        shape = headers["poses"].shape
        if len(shape) != 2 or shape[1] % 3 or not 66 <= shape[1] <= 3 * MAX_POSE_JOINTS:
            raise ValueError(f"`poses` must be [T, 3 * J] with 22 <= J <= {MAX_POSE_JOINTS}, got {list(shape)}.")
    first = "poses" if "poses" in headers else "global_orient"
    frames = headers[first].shape[0] if headers[first].shape else 0
    if not 1 <= frames <= max_frames:
        raise ValueError(f"a motion must have 1 to {max_frames} frames, `{first}` has {frames} (shape {list(headers[first].shape)}).")
    for key, values in per_frame.items():
        if key in headers:
            shape = headers[key].shape
            if not shape or shape[0] != frames or math.prod(shape[1:]) != values or len(shape) > 3:
                raise ValueError(f"`{key}` must be [T, {values}] = [{frames}, {values}], got {list(shape)}.")
    if "expression" in headers:
        shape = headers["expression"].shape
        if len(shape) != 2 or shape[0] != frames or not 1 <= shape[1] <= MAX_EXPRESSION:
            raise ValueError(f"`expression` must be [T, E] = [{frames}, E] with 1 <= E <= {MAX_EXPRESSION}, got {list(shape)}.")
    for key, expected in (("mocap_framerate", "one finite positive number of frames per second"), ("up_axis", "one string, 'y' or 'z'")):
        if key in headers and math.prod(headers[key].shape) != 1:
            raise ValueError(f"`{key}` must be {expected}, got an array of shape {list(headers[key].shape)}.")
    if "up_axis" in headers and headers["up_axis"].dtype.itemsize > 64:
        raise ValueError(f"`up_axis` must be 'y' or 'z', got a string dtype of {headers['up_axis'].dtype.itemsize} bytes.")
    return headers


def _framerate(value: np.ndarray) -> float:
    """``mocap_framerate`` as one finite number of frames per second within the bounds."""
    fps = float(value.reshape(()))
    if not (math.isfinite(fps) and MIN_FRAMERATE <= fps <= MAX_FRAMERATE):
        bounds = f"from {MIN_FRAMERATE:g} to {MAX_FRAMERATE:g} frames per second"
        raise ValueError(f"`mocap_framerate` must be one finite number {bounds}, got {fps}.")
    return fps


def _up_axis(value: np.ndarray) -> str:
    """``up_axis`` as 'y' or 'z'."""
    item = value.reshape(()).item()
    up = item.decode("latin-1") if isinstance(item, bytes) else str(item)
    if up not in ("y", "z"):
        raise ValueError(f"`up_axis` must be 'y' or 'z', got {up!r}.")
    return up
