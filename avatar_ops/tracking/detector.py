"""Person keypoints and mask from MediaPipe's legacy ``solutions`` models, whose weights ship in the
``mediapipe`` wheel (BlazePose full, ``model_complexity=1``, and selfie segmentation).

BlazePose sees one person per call; to count people and pick the main subject we segment every
person with the selfie model, split the mask into connected components and run the pose model on
the crop of the chosen one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydantic import Field
from scipy import ndimage

from avatar_ops.tracking.keypoints import BLAZEPOSE_INDEX, remap
from avatar_ops.types import FrozenConfig


class DetectorConfig(FrozenConfig):
    """Settings of the bundled MediaPipe person detector."""

    min_detection_confidence: float = Field(0.5, ge=0, le=1, description="BlazePose detection threshold.")
    min_person_area: float = Field(0.01, gt=0, lt=1, description="Smallest mask component (fraction of the image) counted as a person.")
    min_relative_area: float = Field(0.2, gt=0, le=1, description="Components smaller than this fraction of the largest are not counted as people.")
    crop_padding: float = Field(0.25, ge=0, description="Padding around the chosen person's mask box, as a fraction of its size, for the pose crop.")


@dataclasses.dataclass
class Detection:
    """The main subject of one photo.

    Attributes:
        keypoints: [K, 3] (x, y, confidence) in KEYPOINT_NAMES order, full-image pixels.
        mask: [H, W] bool person mask of the main subject.
        num_people: people seen in the photo.
    """

    keypoints: np.ndarray
    mask: np.ndarray
    num_people: int


class MediaPipeDetector:
    """Callable: ``detector(rgb) -> Detection | None`` (None when no person is found)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        import mediapipe as mp  # deferred: heavy import

        self.config = config or DetectorConfig()
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, enable_segmentation=True,
            min_detection_confidence=self.config.min_detection_confidence,
        )  # fmt: skip
        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def close(self) -> None:
        self._pose.close()
        self._segmenter.close()

    def _pose_on(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        result = self._pose.process(np.ascontiguousarray(rgb))
        if result.pose_landmarks is None:
            return None
        h, w = rgb.shape[:2]
        raw = np.array([(lm.x * w, lm.y * h, lm.visibility) for lm in result.pose_landmarks.landmark], dtype=np.float32)
        inside = (raw[:, 0] >= 0) & (raw[:, 0] < w) & (raw[:, 1] >= 0) & (raw[:, 1] < h)
        raw[~inside, 2] = 0.0
        mask = result.segmentation_mask > 0.5 if result.segmentation_mask is not None else np.zeros((h, w), bool)
        return remap(raw, BLAZEPOSE_INDEX), mask

    def people_components(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Boolean masks of the people the selfie segmenter separates, largest first."""
        seg = self._segmenter.process(np.ascontiguousarray(rgb)).segmentation_mask
        if seg is None:
            return []
        labels, n = ndimage.label(seg > 0.5)
        if n == 0:
            return []
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        total = labels.size
        keep = [i + 1 for i, a in enumerate(areas) if a >= self.config.min_person_area * total and a >= self.config.min_relative_area * areas.max()]
        keep.sort(key=lambda i: -areas[i - 1])
        return [labels == i for i in keep]

    def __call__(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Detection | None:
        h, w = rgb.shape[:2]
        components = self.people_components(rgb)
        num_people = len(components)
        crop_box = None
        if num_people > 1:
            def score(m: np.ndarray) -> float:
                ys, xs = np.nonzero(m)
                offset = np.hypot(xs.mean() / w - 0.5, ys.mean() / h - 0.5)
                return float(m.sum()) * (1.0 - min(offset, 0.9))

            chosen = max(components, key=score)
            ys, xs = np.nonzero(chosen)
            pad_x = (xs.max() - xs.min()) * self.config.crop_padding
            pad_y = (ys.max() - ys.min()) * self.config.crop_padding
            crop_box = (
                int(max(0, xs.min() - pad_x)), int(max(0, ys.min() - pad_y)),
                int(min(w, xs.max() + pad_x + 1)), int(min(h, ys.max() + pad_y + 1)),
            )  # fmt: skip
        if crop_box is None:
            found = self._pose_on(rgb)
            if found is None:
                return None
            keypoints, mask = found
        else:
            x0, y0, x1, y1 = crop_box
            found = self._pose_on(rgb[y0:y1, x0:x1])
            if found is None:
                return None
            keypoints, crop_mask = found
            keypoints[:, 0] += x0
            keypoints[:, 1] += y0
            mask = np.zeros((h, w), bool)
            mask[y0:y1, x0:x1] = crop_mask
        if alpha is not None:
            # A cut-out photo: its alpha channel is the most precise person mask there is.
            mask = alpha > 127
        if keypoints[:, 2].max() <= 0 or (mask.sum() == 0 and alpha is None):
            return None
        return Detection(keypoints=keypoints, mask=mask, num_people=max(num_people, 1))
