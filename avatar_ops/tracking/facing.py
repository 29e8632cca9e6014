"""Which way a fitted person faces: towards the camera, away from it, or sideways.

The fit starts facing the way the detector's metric landmarks say (or, without them, the way the
left/right order of the shoulders says: a person facing the camera has their left shoulder on the
image's right), and the keypoints settle it. This reads the answer off the fitted orientation: the
angle between the direction the body's front faces and the direction from the body to the camera.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from avatar_ops.body.rotations import axis_angle_to_matrix
from avatar_ops.types import Facing

#: Up to this angle (degrees) between the body's front and the camera, it faces the camera; from
#: 180 minus it, it faces away; in between, it is seen from the side.
FRONT_MAX_DEG = 60.0


def facing_angle_deg(global_orient: np.ndarray, transl: np.ndarray) -> float:
    """Degrees between the body's forward direction (its +z, camera frame after ``global_orient``,
    axis-angle [3]) and the direction from the body (root at ``transl`` [3], metres) to the camera
    at the origin: 0 faces the camera, 180 faces away."""
    rotation = axis_angle_to_matrix(torch.as_tensor(np.asarray(global_orient, dtype=np.float32))[None])[0].numpy()
    forward = rotation[:, 2]
    transl = np.asarray(transl, dtype=np.float64)
    to_camera = -transl / np.linalg.norm(transl) if np.linalg.norm(transl) > 1e-6 else np.array([0.0, 0.0, -1.0])
    # atan2 of sine and cosine, not acos: as exact at 0 and 180 degrees as anywhere else.
    return math.degrees(math.atan2(float(np.linalg.norm(np.cross(forward, to_camera))), float(forward @ to_camera)))


def facing_of(angle_deg: float) -> Facing:
    """``front``, ``back`` or ``side`` for a :func:`facing_angle_deg`."""
    if not 0.0 <= angle_deg <= 180.0:
        raise ValueError(f"`angle_deg` must be in [0, 180], got {angle_deg}.")
    if angle_deg <= FRONT_MAX_DEG:
        return "front"
    return "back" if angle_deg >= 180.0 - FRONT_MAX_DEG else "side"
