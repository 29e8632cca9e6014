"""Person keypoints and mask from MediaPipe's legacy ``solutions`` models, whose weights ship in the
``mediapipe`` wheel (BlazePose full, ``model_complexity=1``, with its segmentation head).

BlazePose sees one person per call, at its detector's 224-pixel input. To count people and pick
the main subject (largest, most central), each found person is painted out and the photo searched
again. Unless the whole photo held exactly one large person, the search goes on in person-sized
windows at several scales (a person a few hundred pixels tall in a crowd is a few dozen pixels at
the detector's input), with everyone found so far painted out.
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
    min_person_area: float = Field(0.001, gt=0, lt=1, description="Smallest person mask (fraction of the image) counted as a person (a person an eighth of a 640-pixel photo tall covers about 0.002).")
    max_people: int = Field(12, ge=1, description="Most people searched for in one photo.")
    erase_margin: float = Field(0.01, ge=0, lt=0.2, description="A found person's mask is grown by this fraction of the image's longer side before it is painted out.")
    min_keypoint_confidence: float = Field(0.3, ge=0, le=1, description="Keypoints below this visibility do not count towards a detection.")
    window_scales: tuple[float, ...] = Field(
        (1.0, 0.6, 0.35), description="Sides of the square search windows, as fractions of the photo's shorter side (empty: search the whole photo only)."
    )
    window_overlap: float = Field(0.34, ge=0, lt=0.9, description="Overlap of neighbouring search windows, as a fraction of their side.")
    min_window_side: int = Field(128, ge=32, description="Search windows smaller than this many pixels are not searched.")
    min_window_keypoints: int = Field(8, ge=3, description="Fewer confident keypoints than this in a search window are not a person.")
    max_windows: int = Field(48, ge=0, description="Most search windows per photo (the coarsest scales first): a bound on the detector's cost.")
    large_person: float = Field(0.5, gt=0, le=1, description="A person whose keypoints span this fraction of the photo's height (or more) is large: one large person alone needs no window search.")


@dataclasses.dataclass
class Person:
    """One person found in a photo.

    Attributes:
        keypoints: [K, 3] (x, y, confidence) in KEYPOINT_NAMES order, full-image pixels.
        mask: [H, W] bool person mask.
        world_keypoints: [K, 4] BlazePose's metric 3D landmarks, or None (see :class:`Detection`).
        window: (x0, y0, x1, y1) the part of the photo the person was found in.
    """

    keypoints: np.ndarray
    mask: np.ndarray
    world_keypoints: np.ndarray | None
    window: tuple[int, int, int, int]

    def upright(self, min_confidence: float) -> bool:
        """Whether the face is above the hips in the image (True when either is unseen)."""
        kp, confident = self.keypoints, self.keypoints[:, 2] > min_confidence
        face, hips = confident.copy(), confident.copy()
        face[5:], hips[:11], hips[13:] = False, False, False
        return not (face.any() and hips.any()) or kp[face, 1].mean() < kp[hips, 1].mean()

    def height(self, min_confidence: float) -> float:
        """The span of the confident keypoints, in pixels (0 with fewer than two)."""
        ys = self.keypoints[self.keypoints[:, 2] > min_confidence, 1]
        return float(ys.max() - ys.min()) if len(ys) > 1 else 0.0


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
        window: (x0, y0, x1, y1) the part of the photo the main subject was found in.
    """

    keypoints: np.ndarray
    mask: np.ndarray
    num_people: int
    world_keypoints: np.ndarray | None = None
    window: tuple[int, int, int, int] | None = None


def search_windows(width: int, height: int, scales: tuple[float, ...], overlap: float, limit: int, min_side: int = 1) -> list[tuple[int, int, int, int]]:
    """Square windows (x0, y0, x1, y1) covering the photo at each scale, coarsest first, at most
    ``limit``, none with a side under ``min_side`` pixels."""
    windows: list[tuple[int, int, int, int]] = []
    for scale in sorted(scales, reverse=True):
        side = round(scale * min(width, height))
        if side < min_side:
            continue
        stride = max(1, round(side * (1.0 - overlap)))
        xs = sorted({*range(0, max(width - side, 0) + 1, stride), max(width - side, 0)})
        ys = sorted({*range(0, max(height - side, 0) + 1, stride), max(height - side, 0)})
        windows += [(x, y, min(x + side, width), min(y + side, height)) for y in ys for x in xs]
    return list(dict.fromkeys(windows))[:limit]


def over_grey(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A cut-out ([H, W, 3] uint8 with its [H, W] uint8 alpha) composited over mid-grey: over the
    black a transparent PNG usually holds, BlazePose's detector misses some people seen from
    behind (dark hair and clothes lose their outline, and no face shows); over grey it finds them.
    (Not the first look: over grey it places the keypoints of people seen from the front less
    well on the quality benchmark's subjects.)"""
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.ascontiguousarray((rgb.astype(np.float32) * a + 128.0 * (1.0 - a)).round().astype(np.uint8))


class MediaPipeDetector:
    """Callable: ``detector(rgb) -> Detection | None`` (None when no person is found)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        import mediapipe as mp  # deferred: heavy import

        self.config = config or DetectorConfig()
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, enable_segmentation=True,
            min_detection_confidence=self.config.min_detection_confidence,
        )  # fmt: skip

        self._face_mesh = None  # built on the first photo where BlazePose finds nobody

    def close(self) -> None:
        self._pose.close()
        if self._face_mesh is not None:
            self._face_mesh.close()

    def count_faces(self, rgb: np.ndarray) -> int:
        """Faces in the photo, from the bundled face mesh (its own short-range face detector): the
        person in a head-and-shoulders photo, whom BlazePose's full-body model does not find."""
        if self._face_mesh is None:
            import mediapipe as mp

            self._face_mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=self.config.max_people, refine_landmarks=False,
                min_detection_confidence=self.config.min_detection_confidence,
            )  # fmt: skip
        result = self._face_mesh.process(np.ascontiguousarray(rgb))
        return len(result.multi_face_landmarks or [])

    def _pose_on(self, rgb: np.ndarray, window: tuple[int, int, int, int]) -> tuple[Person, bool] | None:
        """The most prominent person in ``rgb[window]``, in full-image coordinates, and whether
        any of its landmarks fell outside the window but inside the photo (the window cut it)."""
        x0, y0, x1, y1 = window
        result = self._pose.process(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        if result.pose_landmarks is None:
            return None
        h, w = rgb.shape[:2]
        cw, ch = x1 - x0, y1 - y0
        raw = np.array([(x0 + lm.x * cw, y0 + lm.y * ch, lm.visibility) for lm in result.pose_landmarks.landmark], dtype=np.float32)
        in_window = (raw[:, 0] >= x0) & (raw[:, 0] < x1) & (raw[:, 1] >= y0) & (raw[:, 1] < y1)
        in_photo = (raw[:, 0] >= 0) & (raw[:, 0] < w) & (raw[:, 1] >= 0) & (raw[:, 1] < h)
        cut = bool((~in_window & in_photo & (raw[:, 2] > self.config.min_keypoint_confidence)).any())
        raw[~in_window, 2] = 0.0
        mask = np.zeros((h, w), bool)
        if result.segmentation_mask is not None:
            mask[y0:y1, x0:x1] = result.segmentation_mask > 0.5
        world = None
        if result.pose_world_landmarks is not None:
            metric = np.array([(lm.x, lm.y, lm.z, lm.visibility) for lm in result.pose_world_landmarks.landmark], dtype=np.float32)
            metric[:, 3] = raw[:, 2]  # a landmark outside the image is not trusted in 3D either
            world = remap_world(metric, BLAZEPOSE_INDEX)
        return Person(remap(raw, BLAZEPOSE_INDEX), mask, world, window), cut

    def people(self, rgb: np.ndarray) -> list[Person]:
        """Every person found, in the order found: the whole photo first, then search windows.

        BlazePose returns one person per call (the most prominent), so each found person is
        painted out (its mask, dilated) and the photo searched again, up to ``max_people``. Unless
        that found exactly one large person, windows at ``window_scales`` are searched the same
        way; a person a window cuts is left for a window that holds it whole, and one with few
        keypoints or its face below its hips is taken for a texture.
        """
        h, w = rgb.shape[:2]
        config = self.config
        work = np.array(rgb, copy=True)
        erased = np.zeros((h, w), bool)
        found: list[Person] = []
        grow = max(1, round(config.erase_margin * max(h, w)))

        def accept(person: Person) -> bool:
            person.mask &= ~erased
            visible = person.keypoints[:, 2] > config.min_keypoint_confidence
            if visible.sum() < 3 or person.mask.sum() < config.min_person_area * h * w:
                return False
            xy = np.clip(person.keypoints[visible, :2].astype(int), 0, [w - 1, h - 1])
            if erased[xy[:, 1], xy[:, 0]].mean() > 0.5:
                return False  # the same person again (its mask missed part of it)
            found.append(person)
            painted = ndimage.binary_dilation(person.mask, iterations=grow) if grow else person.mask
            erased[...] |= painted
            work[painted] = 0
            return True

        def plausible(person: Person) -> bool:
            confident = int((person.keypoints[:, 2] > config.min_keypoint_confidence).sum())
            return confident >= config.min_window_keypoints and person.upright(config.min_keypoint_confidence)

        whole = (0, 0, w, h)
        while len(found) < config.max_people:
            outcome = self._pose_on(work, whole)
            if outcome is None or not accept(outcome[0]):
                break
        if len(found) == 1 and found[0].height(config.min_keypoint_confidence) >= config.large_person * h:
            return found
        for window in search_windows(w, h, config.window_scales, config.window_overlap, config.max_windows, config.min_window_side):
            if len(found) >= config.max_people:
                break
            if erased[window[1] : window[3], window[0] : window[2]].all():
                continue
            outcome = self._pose_on(work, window)
            # In a window, textures can pass for a small person (its face below its hips, say).
            if outcome is not None and not outcome[1] and plausible(outcome[0]):
                accept(outcome[0])
        return found

    def people_components(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Person masks, largest first (for photos whose keypoints were supplied)."""
        return sorted((p.mask for p in self.people(rgb)), key=lambda m: -int(m.sum()))

    def __call__(self, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Detection | None:
        h, w = rgb.shape[:2]
        people = self.people(rgb)
        if not people and alpha is not None:
            # A cut-out whose person BlazePose missed over its own background: look again over grey.
            people = self.people(over_grey(rgb, alpha))
        if not people:
            return None

        def score(person: Person) -> float:
            ys, xs = np.nonzero(person.mask)
            offset = np.hypot(xs.mean() / w - 0.5, ys.mean() / h - 0.5)
            return float(len(ys)) * (1.0 - min(offset, 0.9))

        main = max(people, key=score)
        # A cut-out photo: its alpha channel is the most precise person mask there is.
        mask = alpha > 127 if alpha is not None else main.mask
        return Detection(keypoints=main.keypoints, mask=mask, num_people=len(people), world_keypoints=main.world_keypoints, window=main.window)
