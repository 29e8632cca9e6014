"""A synthetic SMPL-X-format model file, for tests, benchmarks and trying the SMPL-X path without
the licensed model (never committed as a file; it is not a body anyone should build avatars of).

It has the real SMPL-X kinematic tree (55 joints), 10475 vertices, and every array ``smplx`` reads,
but its surface is a set of capsules around the bones: enough to test loading, posing and fitting
without the licensed model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar_ops.body.base import SMPLX_JOINT_NAMES, SMPLX_PARENTS

NUM_VERTICES = 10475

# T-pose joint positions (metres, y up, facing +z, subject's left at +x).
_BODY = {
    "pelvis": (0.0, 0.0, 0.0), "left_hip": (0.09, -0.08, 0.0), "right_hip": (-0.09, -0.08, 0.0),
    "spine1": (0.0, 0.11, -0.01), "left_knee": (0.11, -0.47, 0.0), "right_knee": (-0.11, -0.47, 0.0),
    "spine2": (0.0, 0.24, 0.0), "left_ankle": (0.12, -0.87, -0.03), "right_ankle": (-0.12, -0.87, -0.03),
    "spine3": (0.0, 0.30, 0.01), "left_foot": (0.13, -0.93, 0.10), "right_foot": (-0.13, -0.93, 0.10),
    "neck": (0.0, 0.51, -0.02), "left_collar": (0.07, 0.42, -0.01), "right_collar": (-0.07, 0.42, -0.01),
    "head": (0.0, 0.60, 0.03), "left_shoulder": (0.18, 0.45, -0.02), "right_shoulder": (-0.18, 0.45, -0.02),
    "left_elbow": (0.44, 0.45, -0.04), "right_elbow": (-0.44, 0.45, -0.04),
    "left_wrist": (0.69, 0.45, -0.04), "right_wrist": (-0.69, 0.45, -0.04),
    "jaw": (0.0, 0.60, 0.05), "left_eye": (0.03, 0.68, 0.09), "right_eye": (-0.03, 0.68, 0.09),
}  # fmt: skip
_RADIUS = {"spine": 0.13, "pelvis": 0.13, "hip": 0.075, "knee": 0.055, "ankle": 0.045, "foot": 0.035, "neck": 0.05,
           "collar": 0.05, "head": 0.09, "shoulder": 0.05, "elbow": 0.04, "wrist": 0.025}  # fmt: skip


def _joint_positions() -> np.ndarray:
    joints = np.zeros((55, 3))
    for i, name in enumerate(SMPLX_JOINT_NAMES):
        if name in _BODY:
            joints[i] = _BODY[name]
            continue
        side, finger = name.split("_")
        sign = 1.0 if side == "left" else -1.0
        segment = int(finger[-1])
        finger = finger[:-1]
        offset = {"thumb": (0.02, -0.02, 0.03), "index": (0.08, 0.0, 0.025), "middle": (0.085, 0.0, 0.0),
                  "ring": (0.08, 0.0, -0.02), "pinky": (0.07, 0.0, -0.04)}[finger]  # fmt: skip
        wrist = np.array(_BODY[f"{side}_wrist"])
        joints[i] = wrist + np.array([sign * (offset[0] + 0.025 * (segment - 1)), offset[1], offset[2]])
    return joints


def _segment_end(joints: np.ndarray, j: int) -> np.ndarray:
    """Where the capsule that starts at joint ``j`` ends."""
    preferred = {"pelvis": "spine1", "spine3": "neck", "left_wrist": "left_middle1", "right_wrist": "right_middle1"}
    name = SMPLX_JOINT_NAMES[j]
    if name in preferred:
        return joints[SMPLX_JOINT_NAMES.index(preferred[name])]
    children = [c for c, p in enumerate(SMPLX_PARENTS) if p == j]
    if children and name not in ("head",):
        return joints[children[0]]
    parent = joints[SMPLX_PARENTS[j]]
    direction = joints[j] - parent
    length = {"head": 0.2, "jaw": 0.05, "left_eye": 0.01, "right_eye": 0.01}.get(name.split("_")[-1] if "eye" in name else name, 0.02)
    if name == "head":
        return joints[j] + np.array([0.0, 0.2, 0.0])
    if "foot" in name:
        return joints[j] + np.array([0.0, 0.0, 0.08])
    return joints[j] + direction / (np.linalg.norm(direction) + 1e-9) * length


def _radius(name: str) -> float:
    for key, r in _RADIUS.items():
        if key in name:
            return r
    return 0.008 if name not in ("jaw", "left_eye", "right_eye") else 0.01


def make_synthetic_smplx(path: str | Path, seed: int = 0, num_betas: int = 10) -> Path:
    """Write a synthetic SMPL-X ``.npz`` to ``path`` and return it."""
    from smplx.vertex_ids import vertex_ids

    rng = np.random.default_rng(seed)
    joints = _joint_positions()
    landmark_ids = sorted(set(vertex_ids["smplx"].values()))
    free_ids = np.array([i for i in range(NUM_VERTICES) if i not in set(landmark_ids)])
    verts, weights, faces, rings_first = [], [], [], {}
    n_ring, n_len = 12, 6
    for j, name in enumerate(SMPLX_JOINT_NAMES):
        start, end = joints[j], _segment_end(joints, j)
        axis = end - start
        axis_n = axis / (np.linalg.norm(axis) + 1e-9)
        helper = np.array([0.0, 0.0, 1.0]) if abs(axis_n[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = np.cross(axis_n, helper)
        u /= np.linalg.norm(u)
        v = np.cross(axis_n, u)
        r = _radius(name)
        child = next((c for c, p in enumerate(SMPLX_PARENTS) if p == j and np.allclose(joints[c], end)), None)
        base = len(verts)
        rings_first[j] = list(range(base, base + n_ring))
        for a in range(n_len):
            t = a / (n_len - 1)
            for b in range(n_ring):
                ang = 2 * np.pi * b / n_ring
                verts.append(start + t * axis + r * (np.cos(ang) * u + np.sin(ang) * v))
                w = np.zeros(55)
                if child is not None and t > 0.7:
                    w[child] = (t - 0.7) / 0.3 * 0.5
                w[j] = 1.0 - w.sum()
                weights.append(w)
        for a in range(n_len - 1):
            for b in range(n_ring):
                p0 = base + a * n_ring + b
                p1 = base + a * n_ring + (b + 1) % n_ring
                faces += [(p0, p1, p0 + n_ring), (p1, p1 + n_ring, p0 + n_ring)]
    verts, weights, faces = np.array(verts), np.array(weights), np.array(faces)
    if len(verts) > len(free_ids):
        raise RuntimeError("synthetic SMPL-X: too many capsule vertices")
    # Place capsule vertices on the free ids; the rest of the free ids sit inside the pelvis.
    v_template = np.tile(joints[0], (NUM_VERTICES, 1))
    lbs = np.zeros((NUM_VERTICES, 55))
    lbs[:, 0] = 1.0
    v_template[free_ids[: len(verts)]] = verts
    lbs[free_ids[: len(verts)]] = weights
    faces = free_ids[faces]
    # Landmarks (nose, eyes, ears, toes, heels, fingertips) on the surface where they belong.
    head, jnames = joints[SMPLX_JOINT_NAMES.index("head")], list(SMPLX_JOINT_NAMES)
    places = {
        "nose": (head + [0, 0.08, 0.1], "head"), "reye": (head + [-0.03, 0.1, 0.08], "head"), "leye": (head + [0.03, 0.1, 0.08], "head"),
        "rear": (head + [-0.09, 0.08, 0.0], "head"), "lear": (head + [0.09, 0.08, 0.0], "head"),
        "LBigToe": (joints[jnames.index("left_foot")] + [-0.01, 0.0, 0.08], "left_foot"),
        "LSmallToe": (joints[jnames.index("left_foot")] + [0.04, 0.0, 0.06], "left_foot"),
        "LHeel": (joints[jnames.index("left_ankle")] + [0.0, -0.06, -0.06], "left_ankle"),
        "RBigToe": (joints[jnames.index("right_foot")] + [0.01, 0.0, 0.08], "right_foot"),
        "RSmallToe": (joints[jnames.index("right_foot")] + [-0.04, 0.0, 0.06], "right_foot"),
        "RHeel": (joints[jnames.index("right_ankle")] + [0.0, -0.06, -0.06], "right_ankle"),
    }  # fmt: skip
    for key, idx in vertex_ids["smplx"].items():
        if key in places:
            pos, joint = places[key]
        else:  # fingertips
            side = "left" if key.startswith("l") else "right"
            joint = f"{side}_{key[1:]}3"
            pos = joints[jnames.index(joint)] + [0.02 if side == "left" else -0.02, 0, 0]
        v_template[idx] = pos
        lbs[idx] = 0.0
        lbs[idx, jnames.index(joint)] = 1.0
    # J_regressor: each joint is the centre of the first ring of its own capsule.
    j_regressor = np.zeros((55, NUM_VERTICES))
    for j, ring in rings_first.items():
        j_regressor[j, free_ids[ring]] = 1.0 / len(ring)
    # Shape space: beta 0 scales about the pelvis (height), beta 1 thickens limbs, the rest are smooth fields.
    shapedirs = np.zeros((NUM_VERTICES, 3, 20))
    shapedirs[:, :, 0] = 0.06 * (v_template - joints[0])
    nearest = np.argmax(lbs, axis=1)
    radial = v_template - joints[nearest]
    radial[:, 1] *= 0.3
    shapedirs[:, :, 1] = 0.3 * radial
    for k in range(2, 20):
        freq = rng.normal(size=3) * 2.0
        shapedirs[:, :, k] = 0.004 * np.sin(v_template @ freq)[:, None] * rng.normal(size=3)
    # Expression space (columns 10-19, as SMPL-X files with 10 shape and 10 expression columns):
    # local bumps on the head and jaw, 5 mm across 3 cm, as expressions move parts of a face.
    face_ids = np.nonzero(np.isin(lbs.argmax(1), [SMPLX_JOINT_NAMES.index("head"), SMPLX_JOINT_NAMES.index("jaw")]))[0]
    for k in range(10, 20):
        centre = v_template[face_ids[rng.integers(len(face_ids))]]
        falloff = np.exp(-((v_template - centre) ** 2).sum(1) / (2 * 0.03**2))
        shapedirs[:, :, k] = 0.005 * falloff[:, None] * rng.normal(size=3)
    data = {
        "v_template": v_template.astype(np.float32), "f": faces.astype(np.int64),
        "shapedirs": shapedirs.astype(np.float32), "posedirs": np.zeros((NUM_VERTICES, 3, 486), np.float32),
        "J_regressor": j_regressor.astype(np.float32),
        "kintree_table": np.array([[4294967295] + list(SMPLX_PARENTS[1:]), list(range(55))], dtype=np.int64),
        "weights": lbs.astype(np.float32), "lmk_faces_idx": np.zeros(51, np.int64),
        "lmk_bary_coords": np.full((51, 3), 1 / 3, np.float32),
        "hands_componentsl": np.eye(45, dtype=np.float32), "hands_componentsr": np.eye(45, dtype=np.float32),
        "hands_meanl": np.zeros(45, np.float32), "hands_meanr": np.zeros(45, np.float32),
    }  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return path
