"""Generate the bundled motion clips from joint-angle curves (no third-party motion data).

    python -m avatar_ops.motion.make_clips [--out avatar_ops/motion/clips]

Writes ``walk.npz`` (an in-place walk cycle) and ``wave.npz`` (a right-hand wave), SMPL-X
``poses`` [T, 165], ``trans`` [T, 3], ``mocap_framerate`` and ``up_axis='y'``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from avatar_ops.body.base import NUM_POSE_JOINTS, SMPLX_JOINT_NAMES
from avatar_ops.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle

J = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
FPS = 30


def _compose(*axis_angles) -> np.ndarray:
    """Axis-angle of R_1 @ R_2 @ ... (each [3])."""
    m = torch.eye(3)
    for aa in axis_angles:
        m = m @ axis_angle_to_matrix(torch.tensor(aa, dtype=torch.float32))
    return matrix_to_axis_angle(m).numpy()


def walk(seconds: float = 2.0, step_hz: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    frames = round(seconds * FPS)
    pose = np.zeros((frames, NUM_POSE_JOINTS, 3), np.float32)
    trans = np.zeros((frames, 3), np.float32)
    for f in range(frames):
        phase = 2 * math.pi * step_hz * f / FPS
        s = math.sin(phase)
        pose[f, J["left_hip"], 0] = -0.45 * s
        pose[f, J["right_hip"], 0] = 0.45 * s
        pose[f, J["left_knee"], 0] = 0.1 + 0.6 * max(0.0, math.sin(phase + math.pi / 2))
        pose[f, J["right_knee"], 0] = 0.1 + 0.6 * max(0.0, math.sin(phase - math.pi / 2))
        pose[f, J["left_ankle"], 0] = 0.15 * s
        pose[f, J["right_ankle"], 0] = -0.15 * s
        # Arms down, swinging against the legs; elbows a little bent.
        pose[f, J["left_shoulder"]] = _compose([-0.35 * -s, 0.0, 0.0], [0.0, 0.0, -1.2])
        pose[f, J["right_shoulder"]] = _compose([-0.35 * s, 0.0, 0.0], [0.0, 0.0, 1.2])
        pose[f, J["left_elbow"], 1] = -0.3
        pose[f, J["right_elbow"], 1] = 0.3
        pose[f, J["spine1"], 1] = 0.08 * s
        trans[f, 1] = 0.02 * abs(math.cos(phase))
    return pose, trans


def wave(seconds: float = 2.0, wave_hz: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    frames = round(seconds * FPS)
    pose = np.zeros((frames, NUM_POSE_JOINTS, 3), np.float32)
    trans = np.zeros((frames, 3), np.float32)
    for f in range(frames):
        t = f / FPS
        rise = min(1.0, t / 0.4)  # the arm comes up over 0.4 s
        s = math.sin(2 * math.pi * wave_hz * t)
        # Right upper arm out to the side, turned so the elbow bends in the body's plane.
        pose[f, J["right_shoulder"]] = _compose([rise * 1.4, 0.0, 0.0], [0.0, 0.0, 0.15 + (1 - rise) * 1.0])
        pose[f, J["right_elbow"], 1] = rise * (1.1 + 0.35 * s)
        pose[f, J["left_shoulder"]] = _compose([0.0, 0.0, -1.2])
        pose[f, J["left_elbow"], 1] = -0.2
        pose[f, J["head"], 2] = 0.05 * s
    return pose, trans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "clips", help="folder for the .npz clips")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in (("walk", walk), ("wave", wave)):
        pose, trans = make()
        np.savez_compressed(args.out / f"{name}.npz", poses=pose.reshape(len(pose), -1), trans=trans, mocap_framerate=np.float32(FPS), up_axis=np.str_("y"))
        print(f"{args.out / name}.npz: {len(pose)} frames")


if __name__ == "__main__":
    main()
