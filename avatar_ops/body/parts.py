"""Body parts of a body model's surface, from its skinning (every backend speaks SMPL-X joints).

A vertex belongs to the part of the SMPL-X joint that dominates its skinning weights: the thigh is
what the hip turns, the shin what the knee turns, and so on. Parts decide how unseen appearance is
completed (hands take skin, the back of the head takes hair) and how far each part's Gaussians may
grow or move (tighter on hands and feet).
"""

from __future__ import annotations

import dataclasses
import enum

import torch
from torch import Tensor

from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES, BodyModel


class Part(enum.IntEnum):
    HEAD = 0
    NECK = 1
    TORSO = 2
    UPPER_ARM = 3
    FOREARM = 4
    HAND = 5
    THIGH = 6
    SHIN = 7
    FOOT = 8


PART_NAMES: tuple[str, ...] = tuple(p.name.lower() for p in Part)

# Parts whose surfaces meet along a seam on the body. Any other two side by side in an image are
# one in front of the other (a hand on the belly), however near in depth.
JOINED_PARTS = (
    (Part.HEAD, Part.NECK), (Part.NECK, Part.TORSO), (Part.TORSO, Part.UPPER_ARM), (Part.UPPER_ARM, Part.FOREARM),
    (Part.FOREARM, Part.HAND), (Part.TORSO, Part.THIGH), (Part.THIGH, Part.SHIN), (Part.SHIN, Part.FOOT),
)  # fmt: skip


def joined_parts(device: torch.device | str = "cpu") -> Tensor:
    """[P, P] bool: parts joined on the body (:data:`JOINED_PARTS`, either way round), and each part with itself."""
    out = torch.eye(len(Part), dtype=torch.bool, device=device)
    for a, b in JOINED_PARTS:
        out[a, b] = out[b, a] = True
    return out


# The part each SMPL-X joint's bones make (fingers are the hand; toes the foot).
_JOINT_PART = {
    "pelvis": Part.TORSO, "spine1": Part.TORSO, "spine2": Part.TORSO, "spine3": Part.TORSO, "collar": Part.TORSO,
    "neck": Part.NECK, "head": Part.HEAD, "jaw": Part.HEAD, "eye": Part.HEAD,
    "shoulder": Part.UPPER_ARM, "elbow": Part.FOREARM, "wrist": Part.HAND,
    "hip": Part.THIGH, "knee": Part.SHIN, "ankle": Part.FOOT, "foot": Part.FOOT,
}  # fmt: skip
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")


def joint_part(name: str) -> Part:
    """The :class:`Part` of one SMPL-X joint name."""
    base = name.removeprefix("left_").removeprefix("right_")
    if base.startswith(_FINGERS):
        return Part.HAND
    if base not in _JOINT_PART:
        raise ValueError(f"`name` must be an SMPL-X joint name, got {name!r}.")
    return _JOINT_PART[base]


def joint_side(name: str) -> int:
    """+1 for the subject's left (+x in the canonical frame), -1 for the right, 0 on the midline."""
    return 1 if name.startswith("left_") else -1 if name.startswith("right_") else 0


JOINT_PARTS = torch.tensor([int(joint_part(n)) for n in SMPLX_JOINT_NAMES])
JOINT_SIDES = torch.tensor([joint_side(n) for n in SMPLX_JOINT_NAMES])


@dataclasses.dataclass
class BodyParts:
    """Per-vertex labels: ``part`` [V] (:class:`Part` values), ``side`` [V] (+1 left, -1 right, 0
    midline), ``joint`` [V] the dominant SMPL-X joint."""

    part: Tensor
    side: Tensor
    joint: Tensor

    def of_faces(self, faces: Tensor) -> BodyParts:
        """Labels of each face (its first corner's: parts meet along vertex rings)."""
        first = faces[:, 0]
        return BodyParts(self.part[first], self.side[first], self.joint[first])


def body_parts(body: BodyModel) -> BodyParts:
    """The body's per-vertex parts, from the SMPL-X joint dominating each vertex's skinning."""
    joint = body.smplx_skinning_weights().argmax(1)
    return BodyParts(part=JOINT_PARTS.to(joint.device)[joint], side=JOINT_SIDES.to(joint.device)[joint], joint=joint)


def eye_line(rest_keypoints: Tensor) -> tuple[float, float]:
    """The eyes' height and the gap between them (metres), from the rest pose's
    :data:`KEYPOINT_NAMES` keypoints [K, 3]: the head's own scale, for what is placed on it."""
    left, right = rest_keypoints[KEYPOINT_NAMES.index("left_eye")], rest_keypoints[KEYPOINT_NAMES.index("right_eye")]
    return float(0.5 * (left[1] + right[1])), float((left - right).norm())


def head_regions(rest_vertices: Tensor, rest_keypoints: Tensor, parts: BodyParts, rest_normals: Tensor, nape_depth: float = 1.6) -> tuple[Tensor, Tensor]:
    """[V] bool masks of the face and of the scalp, in the rest pose (canonical frame, y up,
    facing +z). The face is the head in front of the ears and below the brows' top; the scalp is
    the rest of the head and the nape (the upper back of the neck), which hair covers. The mouth's
    inner surface (behind the face, between the ears, facing forwards) is neither: seen through
    parted lips, it would read the lips' colour as the hair's.

    Args:
        rest_vertices: [V, 3] the shaped body in its rest pose.
        rest_keypoints: [K, 3] its :data:`KEYPOINT_NAMES` keypoints.
        parts: the body's :func:`body_parts`.
        rest_normals: [V, 3] the rest pose's unit vertex normals.
        nape_depth: how far the nape reaches down the back of the neck, in eye gaps below the eyes.
    """
    kp = {n: rest_keypoints[i] for i, n in enumerate(KEYPOINT_NAMES)}
    ears_z = 0.5 * (kp["left_ear"][2] + kp["right_ear"][2])
    eyes_y, eye_gap = eye_line(rest_keypoints)
    # The brows sit about two thirds of the eye gap above the eyes; the hairline a little higher.
    top = eyes_y + 0.7 * eye_gap
    x, y, z = rest_vertices.unbind(-1)
    head = parts.part == Part.HEAD
    neck = parts.part == Part.NECK
    face = (head | neck) & (z > ears_z + 0.3 * eye_gap) & (y < top)
    nape = neck & (z < ears_z) & (y > eyes_y - nape_depth * eye_gap)
    mouth = (head | neck) & ~face & (y < eyes_y) & (x.abs() < 0.6 * eye_gap) & (rest_normals[:, 2] > 0.5)
    return face, ((head & ~face) | nape) & ~mouth
