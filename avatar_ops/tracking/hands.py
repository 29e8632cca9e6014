"""Hands: MediaPipe Hands (bundled in the wheel, ``model_complexity=1``) on crops around each wrist
at the photo's resolution, then a fit of the SMPL-X hand pose (the wrist and 15 finger joints per
hand) to its 21 landmarks.

* **Crops.** A square around each confidently seen wrist, centred a little past the wrist along
  the forearm, ``crop_scale`` forearm lengths on each side (at least ``min_crop`` pixels): the hand
  fills the crop as the palm detector expects, whatever the photo's size. Of the hands found in a
  crop, the one whose wrist lies nearest the body's wrist is that side's, if it lies within half
  the crop; a hand claimed by both sides goes to the nearer.
* **Fit.** With the body fixed but for the arm of a seen hand, Adam over each tracked hand's wrist
  and finger rotations (SMPL-X axis-angle, world-aligned T-pose axes), and its shoulder and elbow
  (held near the body fit, and to the detected elbow and wrist keypoints, so a hand can reach where
  it was seen when the body fit's wrist fell short, and each upper arm's and forearm's slope out of
  the image plane held at the body fit's, which the hand's 2D landmarks cannot tell): the
  landmarks' reprojection error in units of the hand's size in the photo (wrist to middle
  knuckle), the direction of each finger segment against
  MediaPipe's metric hand landmarks (which tell a finger bent towards the camera from one bent
  away), and a hand prior: a weak pull to the flat hand, hinge joints (the middle and end joints of
  the four fingers bend one way, about the axis across the palm, with at most
  ``max_hyperextension`` backwards), and the knuckles turned only sideways and forward, never
  twisted. Landmarks are fixed averages of posed vertices (:meth:`BodyModel.hand_regressor`).
* **Result.** Per side: tracked or not, the landmarks, the reprojection error in pixels. A hand
  whose fit leaves an error over ``max_error`` hand sizes keeps its rest pose and is not tracked.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from pydantic import Field

from avatar_ops.body.base import FINGERS, HAND_LANDMARK_NAMES, HAND_SIDES, KEYPOINT_NAMES, SMPLX_JOINT_NAMES, BodyModel
from avatar_ops.render.camera import project
from avatar_ops.types import FrozenConfig

#: Each side's hand joints in the SMPL-X pose: wrist, then the 15 finger joints.
HAND_POSE_JOINTS = {
    side: [SMPLX_JOINT_NAMES.index(f"{side}_wrist")] + [SMPLX_JOINT_NAMES.index(f"{side}_{finger}{k}") for finger in FINGERS for k in (1, 2, 3)]
    for side in HAND_SIDES
}
#: Each side's arm joints the hand fit may also turn (from the body fit's pose, held near it), so
#: that the hand reaches the wrist MediaPipe Hands found where the body fit's wrist fell short.
ARM_JOINTS = {side: [SMPLX_JOINT_NAMES.index(f"{side}_shoulder"), SMPLX_JOINT_NAMES.index(f"{side}_elbow")] for side in HAND_SIDES}
_ARM_KEYPOINTS = {side: [KEYPOINT_NAMES.index(f"{side}_elbow"), KEYPOINT_NAMES.index(f"{side}_wrist")] for side in HAND_SIDES}
#: Each side's shoulder, elbow and wrist keypoints: the upper arm and forearm segments.
_ARM_CHAIN = {side: [KEYPOINT_NAMES.index(f"{side}_{joint}") for joint in ("shoulder", "elbow", "wrist")] for side in HAND_SIDES}
#: Finger segments between consecutive landmarks (parent, child), 20 per hand.
SEGMENTS = [(0 if k == 0 else 1 + 4 * f + k - 1, 1 + 4 * f + k) for f in range(5) for k in range(4)]
_MIDDLE_MCP = HAND_LANDMARK_NAMES.index("middle_mcp")


class HandConfig(FrozenConfig):
    """Hand tracking settings."""

    enabled: bool = Field(True, description="Track the hands (off: they keep the body model's rest pose).")
    min_detection_confidence: float = Field(0.5, ge=0, le=1, description="MediaPipe Hands' palm detection threshold.")
    min_wrist_confidence: float = Field(0.5, ge=0, le=1, description="A wrist keypoint below this confidence gets no crop.")
    crop_scale: float = Field(1.0, gt=0, le=4, description="Half the crop's side, in forearm lengths.")
    min_crop: int = Field(48, ge=16, description="Smallest half side of a crop in pixels.")
    iters: int = Field(60, ge=0, le=1000, description="Adam steps of the hand fit.")
    lr: float = Field(0.08, gt=0, description="Adam step size (radians).")
    direction_weight: float = Field(0.05, ge=0, description="Weight of the finger segments' metric directions.")
    prior_weight: float = Field(0.002, ge=0, description="Weight of the pull to the flat hand.")
    hinge_weight: float = Field(1.0, ge=0, description="Weight of the hinge and no-twist limits.")
    max_hyperextension: float = Field(0.2, ge=0, description="Radians a finger joint may bend backwards before the hinge term acts.")
    max_error: float = Field(0.35, gt=0, description="Mean landmark error, in hand sizes, above which a hand counts as not tracked.")
    fit_arms: bool = Field(True, description="Also turn the shoulder and elbow of a seen hand (held near the body fit and to the detected elbow and wrist), so the hand can reach where it was seen.")
    arm_prior_weight: float = Field(0.1, ge=0, description="Weight holding the shoulder and elbow near the body fit's pose (per squared radian).")
    arm_depth_weight: float = Field(1.0, ge=0, description="Weight holding each upper arm's and forearm's slope out of the image plane (the depth component of its unit direction) at the body fit's, which the body fit took from the metric landmarks: the hand's 2D landmarks alone cannot tell an arm bent towards the camera from one bent away, and without this term they flip it.")


@dataclasses.dataclass
class HandObservation:
    """One hand as MediaPipe saw it.

    Attributes:
        keypoints: [21, 3] (x, y, confidence) in photo pixels, :data:`HAND_LANDMARK_NAMES` order.
        world: [21, 3] metric landmarks about the hand's centre (camera-aligned axes: x right,
            y down, z away from the camera).
        crop: (x0, y0, x1, y1) the crop it was found in.
    """

    keypoints: np.ndarray
    world: np.ndarray
    crop: tuple[int, int, int, int]


def wrist_crop(keypoints: np.ndarray, side: str, width: int, height: int, config: HandConfig) -> tuple[int, int, int, int] | None:
    """The crop (x0, y0, x1, y1) around the ``side`` wrist of [K, 3] body keypoints, or None when the
    wrist or its elbow is not confidently seen or the crop misses the photo."""
    wrist, elbow = keypoints[KEYPOINT_NAMES.index(f"{side}_wrist")], keypoints[KEYPOINT_NAMES.index(f"{side}_elbow")]
    if wrist[2] < config.min_wrist_confidence or elbow[2] < config.min_wrist_confidence:
        return None
    forearm = wrist[:2] - elbow[:2]
    centre = wrist[:2] + 0.35 * forearm
    half = max(config.crop_scale * float(np.linalg.norm(forearm)), float(config.min_crop))
    return square_crop(centre, half, width, height)


def square_crop(centre: np.ndarray, half: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The square (x0, y0, x1, y1) of half side ``half`` about ``centre`` clipped to the photo, or
    None when less than 16 pixels of it remain on either side."""
    x0, y0 = max(int(round(centre[0] - half)), 0), max(int(round(centre[1] - half)), 0)
    x1, y1 = min(int(round(centre[0] + half)), width), min(int(round(centre[1] + half)), height)
    return (x0, y0, x1, y1) if x1 - x0 >= 16 and y1 - y0 >= 16 else None


class HandDetector:
    """``detector(rgb, body_keypoints) -> {side: HandObservation}`` for the hands it finds."""

    def __init__(self, config: HandConfig | None = None) -> None:
        import mediapipe as mp  # deferred: heavy import

        self.config = config or HandConfig()
        self._hands = mp.solutions.hands.Hands(
            static_image_mode=True, max_num_hands=2, model_complexity=1, min_detection_confidence=self.config.min_detection_confidence,
        )  # fmt: skip

    def close(self) -> None:
        self._hands.close()

    def __call__(self, rgb: np.ndarray, body_keypoints: np.ndarray) -> dict[str, HandObservation]:
        h, w = rgb.shape[:2]
        claims: list[tuple[float, str, HandObservation]] = []
        for side in HAND_SIDES:
            crop = wrist_crop(body_keypoints, side, w, h, self.config)
            if crop is None:
                continue
            x0, y0, x1, y1 = crop
            result = self._hands.process(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
            wrist = body_keypoints[KEYPOINT_NAMES.index(f"{side}_wrist"), :2]
            best = None
            for landmarks, world, handedness in zip(result.multi_hand_landmarks or [], result.multi_hand_world_landmarks or [], result.multi_handedness or []):
                score = float(handedness.classification[0].score)
                points = np.array([(x0 + p.x * (x1 - x0), y0 + p.y * (y1 - y0), score) for p in landmarks.landmark], np.float32)
                distance = float(np.linalg.norm(points[0, :2] - wrist))
                if distance <= 0.5 * (x1 - x0) and (best is None or distance < best[0]):
                    metric = np.array([(p.x, p.y, p.z) for p in world.landmark], np.float32)
                    best = (distance, HandObservation(points, metric, crop))
            if best is not None:
                claims.append((best[0], side, best[1]))
        found: dict[str, HandObservation] = {}
        for _, side, observation in sorted(claims, key=lambda c: c[0]):
            # One hand seen from both wrists' crops (hands together) goes to the nearer wrist: the
            # same hand if the wrists lie within a third of a hand (wrist to middle knuckle) apart.
            if not any(_same_hand(o.keypoints, observation.keypoints) for o in found.values()):
                found[side] = observation
        return found


def _same_hand(a: np.ndarray, b: np.ndarray) -> bool:
    size = max(float(np.linalg.norm(a[_MIDDLE_MCP, :2] - a[0, :2])), 1.0)
    return float(np.linalg.norm(a[0, :2] - b[0, :2])) < size / 3


def hinge_penalty(pose: torch.Tensor, max_hyperextension: float) -> torch.Tensor:
    """[B] the hand prior's limits on [B, 55, 3] poses (world-aligned T-pose axes: the fingers along
    +x for the left hand, -x for the right, the palm down): the middle and end joints of the four
    fingers bend about z only, towards the palm (-z on the left, +z on the right), and their
    knuckles may turn about y and z but not twist about x."""
    total = torch.zeros(pose.shape[0], dtype=pose.dtype, device=pose.device)
    for side, sign in (("left", -1.0), ("right", 1.0)):
        for finger in FINGERS[1:]:
            knuckle = pose[:, SMPLX_JOINT_NAMES.index(f"{side}_{finger}1")]
            total = total + knuckle[:, 0] ** 2
            for k in (2, 3):
                joint = pose[:, SMPLX_JOINT_NAMES.index(f"{side}_{finger}{k}")]
                total = total + joint[:, 0] ** 2 + joint[:, 1] ** 2 + torch.relu(-sign * joint[:, 2] - max_hyperextension) ** 2
    return total


@dataclasses.dataclass
class HandFit:
    """Per photo: the pose with its fitted hands, and per tracked side the landmarks' projections
    [21, 2] and mean error in pixels."""

    pose: np.ndarray
    projected: dict[str, np.ndarray]
    error_px: dict[str, float]
    tracked: dict[str, bool]


def fit_hands(
    body: BodyModel, shape: torch.Tensor, pose: torch.Tensor, transl: torch.Tensor, intrinsics: torch.Tensor,
    observations: list[dict[str, HandObservation]], config: HandConfig | None = None, body_keypoints: torch.Tensor | None = None,
) -> list[HandFit]:
    """Fit the hands of B photos at once, their bodies fixed.

    Args:
        body: the body model.
        shape, pose, transl, intrinsics: [B, S], [B, 55, 3], [B, 3], [B, 3, 3] the fitted bodies
            (camera frame).
        observations: per photo, the hands seen (:class:`HandDetector`).
        config: the fit's settings.
        body_keypoints: [B, K, 3] the detected body keypoints (x, y, confidence), for the elbows and
            wrists when the arms are fitted too (``config.fit_arms``); None: the arms stay.
    """
    config = config or HandConfig()
    device = body.device
    batch = len(observations)
    target = torch.zeros(batch, 2, len(HAND_LANDMARK_NAMES), 3, device=device)
    world = torch.zeros(batch, 2, len(HAND_LANDMARK_NAMES), 3, device=device)
    for b, seen in enumerate(observations):
        for s, side in enumerate(HAND_SIDES):
            if side in seen:
                target[b, s] = torch.from_numpy(seen[side].keypoints).to(device)
                world[b, s] = torch.from_numpy(seen[side].world).to(device)
    present = target[..., 2].amax(-1) > 0  # [B, 2]
    size = (target[:, :, _MIDDLE_MCP, :2] - target[:, :, 0, :2]).norm(dim=-1).clamp(min=4.0)  # [B, 2] pixels
    arms = config.fit_arms and body_keypoints is not None
    joints = torch.tensor([(ARM_JOINTS[s] if arms else []) + HAND_POSE_JOINTS[s] for s in HAND_SIDES], device=device)  # [2, 16 or 18]
    first_hand = 2 if arms else 0
    if arms:
        arm_target = torch.stack([body_keypoints[:, _ARM_KEYPOINTS[s]] for s in HAND_SIDES], 1).to(device=device, dtype=target.dtype)  # [B, 2, 2, 3]
    base = pose.to(device).clone()
    delta = torch.zeros(batch, 2, joints.shape[1], 3, device=device, requires_grad=True)
    vertex_index, _ = body.hand_regressor()
    parent, child = torch.tensor([p for p, _ in SEGMENTS], device=device), torch.tensor([c for _, c in SEGMENTS], device=device)
    metric = world[:, :, child] - world[:, :, parent]
    metric_ok = (metric.norm(dim=-1) > 1e-4) & present[..., None]

    def posed(d: torch.Tensor) -> torch.Tensor:
        full = base.clone()
        mask = present[..., None, None].to(d.dtype)
        for s in range(2):
            full[:, joints[s]] = base[:, joints[s]] + mask[:, s] * d[:, s]
        return full

    def evaluate(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        full = posed(d)
        keypoints, vertices = body.keypoints_and_vertices(shape.to(device), full, transl.to(device), vertex_index)
        landmarks = body.hand_landmarks(vertices)  # [B, 2, 21, 3]
        uv = project(landmarks.reshape(batch, -1, 3), intrinsics.to(device)).reshape(batch, 2, -1, 2)
        return full, landmarks, uv, keypoints

    def arm_slopes(keypoints: torch.Tensor) -> torch.Tensor:
        """[B, K, 3] camera-frame keypoints -> [B, 2, 2] the depth component of each side's upper
        arm and forearm unit directions."""
        chain = torch.stack([keypoints[:, _ARM_CHAIN[s]] for s in HAND_SIDES], 1)  # [B, 2, 3, 3]
        segment = chain[:, :, 1:] - chain[:, :, :-1]
        return segment[..., 2] / segment.norm(dim=-1).clamp(min=1e-6)

    if config.iters and bool(present.any()):
        if arms:
            with torch.no_grad():
                base_slopes = arm_slopes(body.keypoints_and_vertices(shape.to(device), base, transl.to(device), vertex_index[:0])[0])
        optimiser = torch.optim.Adam([delta], lr=config.lr)
        for _ in range(config.iters):
            optimiser.zero_grad()
            full, landmarks, uv, keypoints = evaluate(delta)
            keypoints_uv = project(keypoints, intrinsics.to(device))
            conf = target[..., 2]
            residual = ((uv - target[..., :2]).norm(dim=-1) / size[..., None]) ** 2
            reprojection = (conf * residual).sum(-1) / conf.sum(-1).clamp(min=1e-6)  # [B, 2]
            fitted = landmarks[:, :, child] - landmarks[:, :, parent]
            cosine = torch.nn.functional.cosine_similarity(fitted, metric, dim=-1)
            direction = ((1 - cosine) * metric_ok).sum(-1) / metric_ok.sum(-1).clamp(min=1)
            finger_pose = full[:, 25:]
            per_hand = reprojection + config.direction_weight * direction
            if arms:
                fitted_arm = torch.stack([keypoints_uv[:, _ARM_KEYPOINTS[s]] for s in HAND_SIDES], 1)  # [B, 2, 2, 2]
                arm_residual = ((fitted_arm - arm_target[..., :2]).norm(dim=-1) / size[..., None]) ** 2
                per_hand = per_hand + (arm_target[..., 2] * arm_residual).sum(-1) / arm_target[..., 2].sum(-1).clamp(min=1e-6)
                per_hand = per_hand + config.arm_prior_weight * (delta[:, :, :first_hand] ** 2).sum((-1, -2))
                per_hand = per_hand + config.arm_depth_weight * ((arm_slopes(keypoints) - base_slopes) ** 2).sum(-1)
            loss = (per_hand * present).sum() + config.prior_weight * (finger_pose**2).sum() + config.hinge_weight * hinge_penalty(full, config.max_hyperextension).sum()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        full, _, uv, _ = evaluate(delta)
        error = (uv - target[..., :2]).norm(dim=-1).mean(-1)  # [B, 2] pixels
        tracked = present & (error / size <= config.max_error)
        # A hand the fit could not follow keeps the body fit's pose.
        keep = tracked[..., None, None].to(full.dtype)
        final = base.clone()
        for s in range(2):
            final[:, joints[s]] = keep[:, s] * full[:, joints[s]] + (1 - keep[:, s]) * base[:, joints[s]]
    fits = []
    for b in range(batch):
        sides = [s for s in range(2) if bool(present[b, s])]
        fits.append(
            HandFit(
                pose=final[b].cpu().numpy(),
                projected={HAND_SIDES[s]: uv[b, s].cpu().numpy() for s in sides},
                error_px={HAND_SIDES[s]: float(error[b, s]) for s in sides},
                tracked={side: bool(tracked[b, s]) for s, side in enumerate(HAND_SIDES)},
            )
        )
    return fits
