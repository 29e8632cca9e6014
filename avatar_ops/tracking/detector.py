"""Person keypoints and mask from MediaPipe's legacy ``solutions`` models, whose weights ship in the
``mediapipe`` wheel (BlazePose full, ``model_complexity=1``, with its segmentation head).

BlazePose sees one person per call; to count people and pick the main subject (largest, most
central) each found person is painted out and the photo searched again.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydantic import Field
from scipy import ndimage

from avatar_ops.tracking.keypoints import BLAZEPOSE_INDEX, remap, remap_world
from avatar_ops.types import FrozenConfig


class DetectorConfig(FrozenConfig):
    """Settings of the bundled MediaPipe person detector."""

    min_detection_confidence: float = Field(0.5, ge=0, le=1, description="BlazePose detection threshold.")
    min_person_area: float = Field(0.01, gt=0, lt=1, description="Smallest person mask (fraction of the image) counted as a person.")
    min_relative_area: float = Field(0.2, gt=0, le=1, description="People whose mask is smaller than this fraction of the largest are not counted.")
    max_people: int = Field(4, ge=1, description="Most people searched for in one photo.")
    erase_margin: float = Field(0.01, ge=0, lt=0.2, description="A found person's mask is grown by this fraction of the image's longer side before it is painted out.")
    min_keypoint_confidence: float = Field(0.3, ge=0, le=1, description="Keypoints below this visibility do not count towards a detection.")


@dataclasses.dataclass
class Detection:
    """The main subject of one photo.

    Attributes:
        keypoints: [K, 3] (x, y, confidence) in KEYPOINT_NAMES order, full-image pixels.
        mask: [H, W] bool person mask of the main subject.
        num_people: people seen in the photo.
        world_keypoints: [K, 4] BlazePose's metric 3D landmarks (x, y, z metres about the hips'
            midpoint, camera-aligned axes: x right, y down, z away from the camera; then
            visibility) in KEYPOINT_NAMES order, or None.
    """

    keypoints: np.ndarray
    mask: np.ndarray
    num_people: int
    world_keypoints: np.ndarray | None = None


class MediaPipeDetector:
    """Callable: ``detector(rgb) -> Detection | None`` (None when no person is found)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        import mediapipe as mp  # deferred: heavy import

        self.config = config or DetectorConfig()
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, enable_segmentation=True,
            min_detection_confidence=self.config.min_detection_confidence,
        )  # fmt: skip

    def close(self) -> None:
        self._pose.close()

    def _pose_on(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        result = self._pose.process(np.ascontiguousarray(rgb))
        if result.pose_landmarks is None:
            return None
        h, w = rgb.shape[:2]
        raw = np.array([(lm.x * w, lm.y * h, lm.visibility) for lm in result.pose_landmarks.landmark], dtype=np.float32)
        inside = (raw[:, 0] >= 0) & (raw[:, 0] < w) & (raw[:, 1] >= 0) & (raw[:, 1] < h)
        raw[~inside, 2] = 0.0
        mask = result.segmentation_mask > 0.5 if result.segmentation_mask is not None else np.zeros((h, w), bool)
        world = None
        if result.pose_world_landmarks is not None:
            metric = np.array([(lm.x, lm.y, lm.z, lm.visibility) for lm in result.pose_world_landmarks.landmark], dtype=np.float32)
            metric[:, 3] = raw[:, 2]  # a landmark outside the image is not trusted in 3D either
            world = remap_world(metric, BLAZEPOSE_INDEX)
        return remap(raw, BLAZEPOSE_INDEX), mask, world

    def people(self, rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Every person BlazePose finds, as (keypoints, mask, world keypoints) in detection order.

        BlazePose returns one person per call (the most prominent), so each found person is
        painted out (its mask, dilated) and the photo searched again, up to ``max_people``.
        """
        h, w = rgb.shape[:2]
        work = np.array(rgb, copy=True)
        erased = np.zeros((h, w), bool)
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        grow = max(1, round(self.config.erase_margin * max(h, w)))
        for _ in range(self.config.max_people):
            result = self._pose_on(work)
            if result is None:
                break
            keypoints, mask, world = result
            mask &= ~erased
            visible = keypoints[:, 2] > self.config.min_keypoint_confidence
            if visible.sum() < 3 or mask.sum() < self.config.min_person_area * h * w:
                break
            xy = np.clip(keypoints[visible, :2].astype(int), 0, [w - 1, h - 1])
            if erased[xy[:, 1], xy[:, 0]].mean() > 0.5:
                break  # the same person again (its mask missed part of it)
            found.append((keypoints, mask, world))
            painted = ndimage.binary_dilation(mask, iterations=grow) if grow else mask
            erased |= painted
            work[painted] = 0
        return found

    def people_components(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Person masks, largest first (for photos whose keypoints were supplied)."""
        return sorted((mask for _, mask, _ in self.people(rgb)), key=lambda m: -int(m.sum()))

    def __call__(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Detection | None:
        h, w = rgb.shape[:2]
        people = self.people(rgb)
        if not people:
            return None
        largest = max(int(m.sum()) for _, m, _ in people)
        people = [p for p in people if p[1].sum() >= self.config.min_relative_area * largest]

        def score(person: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> float:
            ys, xs = np.nonzero(person[1])
            offset = np.hypot(xs.mean() / w - 0.5, ys.mean() / h - 0.5)
            return float(len(ys)) * (1.0 - min(offset, 0.9))

        keypoints, mask, world = max(people, key=score)
        if alpha is not None:
            # A cut-out photo: its alpha channel is the most precise person mask there is.
            mask = alpha > 127
        return Detection(keypoints=keypoints, mask=mask, num_people=len(people), world_keypoints=world)
