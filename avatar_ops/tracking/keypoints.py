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


#: Largest keypoints JSON accepted (about 1,400 OpenPose people).
MAX_KEYPOINTS_JSON_BYTES = 2**20
#: Largest absolute pixel coordinate accepted (keeps the fit's squared distances finite).
MAX_COORDINATE = 1e6


def parse_keypoints_json(text: str | bytes) -> list[np.ndarray]:
    """Parse COCO-17 or OpenPose BODY_25 keypoints.

    Accepted shapes: OpenPose ``{"people": [{"pose_keypoints_2d": [75 numbers]}, ...]}``; COCO
    ``{"keypoints": [51 numbers]}`` or a list of such annotations, or ``[[x, y, v] * 17]``.
    Coordinates are finite pixels within :data:`MAX_COORDINATE`; OpenPose confidences are in
    [0, 1]; COCO visibility flags (0, 1, 2) become confidences (0, 1, 1).

    Returns:
        One [K, 3] array per person.

    Raises:
        ValueError: naming what was expected and what was found (malformed JSON, nesting too
            deep, over-long integers, a wrong structure, count or value).
        TypeError: ``text`` is neither str nor bytes.
    """
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"`text` must be JSON as str or bytes, got {type(text).__name__}.")
    if len(text) > MAX_KEYPOINTS_JSON_BYTES:
        raise ValueError(f"keypoints JSON must be at most {MAX_KEYPOINTS_JSON_BYTES} bytes, got {len(text)}.")
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise ValueError("keypoints JSON is nested too deeply.") from exc
    except ValueError as exc:  # JSONDecodeError, undecodable bytes, integers over Python's digit limit
        raise ValueError(f"keypoints are not valid JSON: {exc}") from exc
    people: list[np.ndarray] = []
    if isinstance(data, dict) and "people" in data:
        if not isinstance(data["people"], list):
            raise ValueError(f"OpenPose `people` must be a list of people, got {type(data['people']).__name__}.")
        for n, person in enumerate(data["people"]):
            if not isinstance(person, dict):
                raise ValueError(f"OpenPose `people[{n}]` must be an object with `pose_keypoints_2d`, got {type(person).__name__}.")
            field = f"OpenPose `people[{n}].pose_keypoints_2d`"
            points = _numbers(person.get("pose_keypoints_2d", []), field, 75, "25*3=75 numbers (BODY_25)").reshape(25, 3)
            _check_points(points, field, max_confidence=1.0)
            people.append(remap(points.astype(np.float32), BODY25_INDEX))
        return people
    if not isinstance(data, (dict, list)):
        raise ValueError(f"keypoints JSON must be an object or a list, got {type(data).__name__}.")
    annotations = data if isinstance(data, list) and data and isinstance(data[0], dict) else [data]
    for n, ann in enumerate(annotations):
        if isinstance(ann, dict):
            field, raw = f"COCO `keypoints` of annotation {n}", ann.get("keypoints")
        elif ann is data:
            field, raw = "COCO keypoints", ann
        else:
            raise ValueError(f"COCO annotation {n} must be an object with `keypoints`, got {type(ann).__name__}.")
        if isinstance(raw, list) and raw and all(isinstance(p, list) for p in raw):  # [[x, y, v] * 17]
            if not all(len(p) == 3 for p in raw):
                raise ValueError(f"{field} must be [x, y, v] triples, got lengths {sorted({len(p) for p in raw})}.")
            raw = [v for p in raw for v in p]
        arr = _numbers(raw, field, 51, "17*3=51 numbers").reshape(17, 3)
        _check_points(arr, field, max_confidence=2.0)
        arr = arr.astype(np.float32)
        if arr[:, 2].max() > 1.0:  # COCO visibility flags
            arr[:, 2] = (arr[:, 2] > 0).astype(np.float32)
        people.append(remap(arr, COCO17_INDEX))
    return people


def _numbers(raw: object, field: str, count: int, expected: str) -> np.ndarray:
    """``raw`` as [count] float64, if it is a flat list of ``count`` finite JSON numbers."""
    if not isinstance(raw, list):
        raise ValueError(f"{field} must be a list of {expected}, got {type(raw).__name__}.")
    if len(raw) != count:
        raise ValueError(f"{field} must hold {expected}, got {len(raw)}.")
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{field} must hold {expected}, got a {type(value).__name__}: {str(value)[:40]!r}.")
    try:
        values = np.array([float(v) for v in raw], dtype=np.float64)
    except OverflowError as exc:  # an integer beyond float range
        raise ValueError(f"{field} must hold finite numbers, got an integer too large for a float.") from exc
    if not np.isfinite(values).all():
        raise ValueError(f"{field} must hold finite numbers, got NaN or infinity.")
    return values


def _check_points(points: np.ndarray, field: str, max_confidence: float) -> None:
    """[N, 3] float64 (x, y, confidence): coordinates within MAX_COORDINATE, confidence in [0, max]
    (checked before the cast to float32, which would overflow)."""
    worst = float(np.abs(points[:, :2]).max())
    if worst > MAX_COORDINATE:
        raise ValueError(f"{field} coordinates must be within +-{MAX_COORDINATE:g} pixels, got {worst:g}.")
    conf = points[:, 2]
    if conf.min() < 0 or conf.max() > max_confidence:
        raise ValueError(f"{field} confidences must be in [0, {max_confidence:g}], got {float(conf.min()):g} to {float(conf.max()):g}.")


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


__all__ = ["KEYPOINT_NAMES", "main_subject", "parse_keypoints_json", "remap"]
