"""2D keypoint formats: BlazePose (the bundled detector), COCO-17 and OpenPose BODY_25 JSON.

Everything is converted to :data:`avatar_ops.body.base.KEYPOINT_NAMES` order as [K, 3] arrays of
(x pixels, y pixels, confidence in [0, 1]); a missing keypoint has confidence 0.
"""

from __future__ import annotations

import json

import numpy as np

from avatar_ops.body.base import KEYPOINT_NAMES, NUM_KEYPOINTS

# Index into each source format for every KEYPOINT_NAMES entry (-1: the format lacks it).
BLAZEPOSE_INDEX = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28, 31, 32, -1, -1, 29, 30)
COCO17_INDEX = tuple(range(17)) + (-1,) * 6
BODY25_INDEX = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11, 19, 22, 20, 23, 21, 24)


def remap(points: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """[N, 3] source keypoints -> [K, 3] in KEYPOINT_NAMES order."""
    out = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    for k, i in enumerate(index):
        if i >= 0 and i < len(points):
            out[k] = points[i]
    return out


def remap_world(points: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """[N, 4] source 3D landmarks (x, y, z, visibility) -> [K, 4] in KEYPOINT_NAMES order."""
    out = np.zeros((NUM_KEYPOINTS, 4), dtype=np.float32)
    for k, i in enumerate(index):
        if i >= 0 and i < len(points):
            out[k] = points[i]
    return out


def _person_size(kp: np.ndarray) -> float:
    valid = kp[kp[:, 2] > 0]
    if len(valid) < 2:
        return 0.0
    span = valid[:, :2].max(0) - valid[:, :2].min(0)
    return float(span[0] * span[1])


def parse_keypoints_json(text: str | bytes) -> list[np.ndarray]:
    """Parse COCO-17 or OpenPose BODY_25 keypoints.

    Accepted shapes: OpenPose ``{"people": [{"pose_keypoints_2d": [75 floats]}, ...]}``; COCO
    ``{"keypoints": [51 floats]}`` or a list of such annotations, or ``[[x, y, v] * 17]``.
    COCO visibility flags (0, 1, 2) become confidences (0, 1, 1).

    Returns:
        One [K, 3] array per person.

    Raises:
        ValueError: naming what was expected and what was found.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"keypoints are not valid JSON: {exc}") from exc
    people: list[np.ndarray] = []
    if isinstance(data, dict) and "people" in data:
        for person in data["people"]:
            flat = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float32)
            if flat.size != 75:
                raise ValueError(f"OpenPose `pose_keypoints_2d` must hold 25*3=75 numbers (BODY_25), got {flat.size}.")
            people.append(remap(flat.reshape(25, 3), BODY25_INDEX))
        return people
    annotations = data if isinstance(data, list) and data and isinstance(data[0], dict) else [data]
    for ann in annotations:
        raw = ann.get("keypoints") if isinstance(ann, dict) else ann
        arr = np.asarray(raw, dtype=np.float32)
        if arr.size != 51:
            raise ValueError(f"COCO keypoints must hold 17*3=51 numbers, got {arr.size} (shape {arr.shape}).")
        arr = arr.reshape(17, 3).copy()
        if arr[:, 2].max() > 1.0:  # COCO visibility flags
            arr[:, 2] = (arr[:, 2] > 0).astype(np.float32)
        people.append(remap(arr, COCO17_INDEX))
    return people


def main_subject(people: list[np.ndarray], width: int, height: int) -> int:
    """Index of the largest, most central person."""
    scores = []
    for kp in people:
        valid = kp[kp[:, 2] > 0]
        if len(valid) == 0:
            scores.append(-1.0)
            continue
        centre = valid[:, :2].mean(0)
        offset = np.hypot((centre[0] - width / 2) / width, (centre[1] - height / 2) / height)
        scores.append(_person_size(kp) * (1.0 - min(offset, 0.9)))
    return int(np.argmax(scores))


__all__ = ["KEYPOINT_NAMES", "parse_keypoints_json", "main_subject", "remap"]
