"""The tracking operator: photo -> person keypoints and mask -> fitted body (batch first)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field

from avatar_ops.body import BodyModel, BodyModelConfig, build_body_model, resolve_device
from avatar_ops.body.base import HAND_LANDMARK_NAMES, KEYPOINT_NAMES, SMPLX_JOINT_NAMES, BodyOperator
from avatar_ops.io.image import DecodedImage
from avatar_ops.render.camera import project
from avatar_ops.render.mesh import rasterize_silhouette
from avatar_ops.tracking.detector import DetectorConfig, MediaPipeDetector
from avatar_ops.tracking.face import FaceConfig, FaceDetector, face_embedding, fit_faces
from avatar_ops.tracking.facing import facing_angle_deg, facing_of
from avatar_ops.tracking.hands import HandConfig, HandDetector, fit_hands
from avatar_ops.tracking.keypoints import main_subject
from avatar_ops.tracking.overlay import mask_iou, resize_mask
from avatar_ops.tracking.smplify import FACE_KEYPOINTS, BodyFitConfig, FitTarget, faces_away, fit_bodies
from avatar_ops.types import Facing, FrozenConfig, Rejected


class TrackingConfig(FrozenConfig):
    """What the tracking operator computes (scheduling lives in the job or Serve config)."""

    body: BodyModelConfig = Field(default_factory=BodyModelConfig, description="The parametric body to fit.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="The bundled person detector.")
    fit: BodyFitConfig = Field(default_factory=BodyFitConfig, description="Fit weights and schedule.")
    hands: HandConfig = Field(default_factory=HandConfig, description="Hand landmarks on crops around the wrists, and the SMPL-X hand pose fitted to them.")
    face: FaceConfig = Field(default_factory=FaceConfig, description="Face Mesh landmarks on a crop around the head, and the head, jaw and expression fitted to them.")
    device: str = Field("auto", description="`auto` (CUDA when available), `cpu` or `cuda[:N]`.")
    min_keypoints: int = Field(6, ge=3, description="Fewer confident keypoints than this rejects the photo (`subject_truncated` when the photo's edge cuts the person, else `too_few_keypoints`).")
    min_subject_height: int = Field(96, ge=1, description="A main subject whose confident keypoints span fewer pixels than this is rejected as `subject_too_small`.")
    max_reprojection_error: float = Field(0.1, gt=0, description="Mean keypoint error, as a fraction of the person's box height, above which the fit is rejected.")


@dataclasses.dataclass
class TrackInput:
    """One photo, with optional 2D keypoints given by the caller (then no detector runs for them).

    Attributes:
        image: the decoded photo.
        keypoints: one [K, 3] array per person in KEYPOINT_NAMES order, or None to detect.
        world_keypoints: with ``keypoints``, optionally each person's metric 3D landmarks, [K, 4]
            (x, y, z metres about the hips' midpoint in camera-aligned axes, then a confidence),
            as a 3D pose estimator gives them; the body fit uses them as it uses the detector's
            (the facing, the start pose, a prior on each limb's direction). None: 2D only.
    """

    image: DecodedImage
    keypoints: list[np.ndarray] | None = None
    world_keypoints: list[np.ndarray] | None = None


@dataclasses.dataclass
class TrackResult:
    """The fitted body of one photo's main subject.

    Attributes:
        body_model: ``anny`` or ``smplx``.
        shape: [S] shape parameters.
        pose: [55, 3] SMPL-X axis-angle pose (index 0: global orientation, camera frame).
        transl: [3] metres, camera frame (OpenCV axes).
        intrinsics: [3, 3] pinhole camera; the camera sits at the origin looking down +z.
        width, height: image size.
        keypoints: [K, 3] the 2D keypoints fitted to (x, y, confidence).
        projected_keypoints: [K, 2] the fitted body's keypoints in the image.
        mask: [H, W] bool person mask.
        num_people: people seen in the photo.
        quality: ``reprojection_error_px``, ``reprojection_error_ratio`` (of the box height),
            ``mask_iou``, ``visible_keypoints``, ``facing_angle_deg`` (see :attr:`facing`) and
            ``hands_tracked``.
        hands: per side (``left``, ``right``) seen by the hand detector: ``tracked`` (the fit
            followed it), ``reprojection_error_px``, ``keypoints`` [21, 3] (x, y, confidence) and
            ``projected`` [21, 2] (the fitted hand's landmarks), MediaPipe's landmark order.
        face: when the face detector saw a face: ``tracked`` (the fit followed it),
            ``reprojection_error_px``, ``keypoints`` [468, 2] and ``projected`` [468, 2] (Face
            Mesh's landmark order), and the fitted ``neck_pose``, ``head_pose`` and ``jaw_pose``
            (axis-angle [3], as in ``pose``; ``jaw_pose`` None for a body without a jaw) and
            ``expression`` ([E] coefficients; None for a body without expressions).
    """

    body_model: str
    shape: np.ndarray
    pose: np.ndarray
    transl: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int
    keypoints: np.ndarray
    projected_keypoints: np.ndarray
    mask: np.ndarray
    num_people: int
    quality: dict[str, float]
    hands: dict[str, dict] = dataclasses.field(default_factory=dict)
    face: dict = dataclasses.field(default_factory=dict)

    @property
    def facing_angle_deg(self) -> float:
        """Degrees between the body's front and the direction to the camera (0: facing it)."""
        return facing_angle_deg(self.pose[0], self.transl)

    @property
    def facing(self) -> Facing:
        """``front``, ``back`` or ``side``, from the fitted orientation."""
        return facing_of(self.facing_angle_deg)

    def to_json(self) -> dict:
        """A JSON-ready dict of everything but the mask (``facing`` and its angle included)."""
        return {
            "body_model": self.body_model, "facing": self.facing, "facing_angle_deg": round(self.facing_angle_deg, 2),
            "shape": self.shape.tolist(),
            "pose": self.pose.tolist(),
            "transl": self.transl.tolist(),
            "camera": {"intrinsics": self.intrinsics.tolist(), "width": self.width, "height": self.height, "convention": "opencv"},
            "keypoint_names": list(KEYPOINT_NAMES),
            "keypoints": self.keypoints.tolist(),
            "projected_keypoints": self.projected_keypoints.tolist(),
            "num_people": self.num_people,
            "quality": self.quality,
            "hand_landmark_names": list(HAND_LANDMARK_NAMES),
            "hands": {side: _listed(hand) for side, hand in self.hands.items()},
            "face": _listed(self.face),
        }

    @classmethod
    def from_json(cls, data: dict, mask: np.ndarray) -> TrackResult:
        """Inverse of :meth:`to_json` (the mask travels separately)."""
        f32 = lambda key: np.asarray(data[key], dtype=np.float32)  # noqa: E731
        return cls(
            body_model=data["body_model"], shape=f32("shape"), pose=f32("pose"), transl=f32("transl"),
            intrinsics=np.asarray(data["camera"]["intrinsics"], dtype=np.float32), width=int(data["camera"]["width"]),
            height=int(data["camera"]["height"]), keypoints=f32("keypoints"), projected_keypoints=f32("projected_keypoints"),
            mask=np.asarray(mask, dtype=bool), num_people=int(data["num_people"]), quality=dict(data["quality"]),
            hands={side: _arrays(hand) for side, hand in data.get("hands", {}).items()}, face=_arrays(data.get("face", {})),
        )  # fmt: skip


_ARRAY_KEYS = ("keypoints", "projected", "neck_pose", "head_pose", "jaw_pose", "expression")


def _listed(record: dict) -> dict:
    """A hand or face record with its arrays as lists (JSON)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items()}


def _arrays(record: dict) -> dict:
    """Inverse of :func:`_listed`."""
    return {k: (np.asarray(v, dtype=np.float32) if k in _ARRAY_KEYS and v is not None else v) for k, v in record.items()}


def _face_record(seen, fitted) -> dict:
    """TrackResult.face from the detector's observation and the face fit."""
    if seen is None or fitted is None:
        return {}
    joints = {name: SMPLX_JOINT_NAMES.index(name) for name in ("neck", "head", "jaw")}
    return {
        "tracked": fitted.tracked, "reprojection_error_px": round(fitted.error_px, 3),
        "keypoints": seen.keypoints, "projected": fitted.projected,
        "neck_pose": fitted.pose[joints["neck"]], "head_pose": fitted.pose[joints["head"]],
        "jaw_pose": fitted.pose[joints["jaw"]] if fitted.has_jaw else None, "expression": fitted.expression,
    }  # fmt: skip


def _hand_record(seen: dict | None, fitted) -> dict[str, dict]:
    """TrackResult.hands from the detector's observations and the hand fit."""
    if not seen or fitted is None:
        return {}
    return {
        side: {
            "tracked": fitted.tracked[side], "reprojection_error_px": round(fitted.error_px[side], 3),
            "keypoints": observation.keypoints, "projected": fitted.projected[side],
        }
        for side, observation in seen.items()
    }  # fmt: skip


def _touches_edge(mask: np.ndarray | None) -> bool:
    """Whether a person mask reaches the photo's border."""
    return mask is not None and bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


class TrackingOperator(BodyOperator):
    """``op(items) -> list[TrackResult | Rejected]``, one result per input, in order."""

    config_class = TrackingConfig

    def __init__(
        self, config: TrackingConfig, body: BodyModel, detector: MediaPipeDetector | None, hand_detector: HandDetector | None = None,
        face_detector: FaceDetector | None = None,
    ) -> None:
        super().__init__(config, body)
        self.detector = detector
        self.hand_detector = hand_detector
        self.face_detector = face_detector
        # Where the face landmarks sit on this body, placed now: a body whose face Face Mesh does
        # not recognise fails here (FaceCalibrationError), not on every photo.
        self.face_embedding = face_embedding(body) if face_detector is not None else None

    @classmethod
    def from_config(cls, config: TrackingConfig | None = None, *, body: BodyModel | None = None) -> TrackingOperator:
        """Build the body model (unless one built from the same config is given) and the detector
        once (per actor or replica)."""
        config = config or TrackingConfig()
        body = build_body_model(config.body, resolve_device(config.device)) if body is None else body
        return cls(
            config, body, MediaPipeDetector(config.detector), HandDetector(config.hands) if config.hands.enabled else None,
            FaceDetector(config.face) if config.face.enabled else None,
        )  # fmt: skip

    def _prepare(self, item: TrackInput) -> FitTarget | Rejected:
        image = item.image
        num_people = 1
        mask = None
        world = None
        if item.keypoints is not None:
            if len(item.keypoints) == 0:
                return Rejected("no_person", "the supplied keypoints list no person")
            # Given in the file's pixels; the photo may have been downscaled at decode.
            people = [np.asarray(k, dtype=np.float32) * np.array([image.scale, image.scale, 1.0], np.float32) for k in item.keypoints]
            index = main_subject(people, image.width, image.height)
            keypoints = people[index]
            num_people = len(people)
            if item.world_keypoints is not None:
                if len(item.world_keypoints) != len(people):
                    raise ValueError(f"`world_keypoints` must hold one array per person in `keypoints` ({len(people)}), got {len(item.world_keypoints)}.")
                landmarks = [np.asarray(w, dtype=np.float32) for w in item.world_keypoints]
                for w in landmarks:  # every person's, not only the main subject's: malformed input is refused
                    if w.shape != (len(KEYPOINT_NAMES), 4) or not np.isfinite(w).all():
                        raise ValueError(f"`world_keypoints` must be finite [{len(KEYPOINT_NAMES)}, 4] arrays (x, y, z, confidence), got shape {w.shape}.")
                world = landmarks[index]
            if image.alpha is not None:
                mask = image.alpha > 127
            elif self.detector is not None:
                components = self.detector.people_components(image.rgb)
                mask = components[0] if components else None
        else:
            if item.world_keypoints is not None:
                raise ValueError("`world_keypoints` are the supplied `keypoints`' metric landmarks: pass `keypoints` with them.")
            if self.detector is None:
                raise ValueError("This TrackingOperator has no detector: pass `keypoints` with every item.")
            detection = self.detector(image.rgb, image.alpha)
            if detection is None:
                faces = self.detector.count_faces(image.rgb)
                if faces:
                    return Rejected("subject_truncated", f"{faces} face(s) but no body to fit: the photo's frame cuts the person (a head-and-shoulders photo?)")
                return Rejected("no_person", "no person was detected in the photo")
            keypoints, mask, num_people, world = detection.keypoints, detection.mask, detection.num_people, detection.world_keypoints
        if keypoints.shape != (len(KEYPOINT_NAMES), 3):
            raise ValueError(f"keypoints must be [{len(KEYPOINT_NAMES)}, 3], got {keypoints.shape}.")
        away = faces_away(keypoints, world, self.config.fit.min_confidence)
        if away:
            # Seen from behind, a nose and eyes are the detector's guesses (on the back of the
            # head): fitted to, they throw the head back. They are recorded unseen.
            keypoints = keypoints.copy()
            keypoints[FACE_KEYPOINTS, 2] = 0.0
        confident = keypoints[:, 2] > self.config.fit.min_confidence
        visible = int(confident.sum())
        if visible < self.config.min_keypoints:
            seen = f"{visible} confident keypoints, fewer than min_keypoints={self.config.min_keypoints}"
            if _touches_edge(mask):
                return Rejected("subject_truncated", f"{seen}: the photo's edge cuts the main subject")
            return Rejected("too_few_keypoints", seen)
        span = float(np.ptp(keypoints[confident, 1]))
        if span < self.config.min_subject_height:
            seen = f"the main subject's keypoints span {span:.0f} px, under min_subject_height={self.config.min_subject_height}"
            rows = np.nonzero(mask.any(1))[0] if mask is not None and mask.any() else np.zeros(1, int)
            if _touches_edge(mask) and np.ptp(rows) + 1 >= self.config.min_subject_height:
                return Rejected("subject_truncated", f"{seen}: the photo's edge cuts the main subject")
            return Rejected("subject_too_small", f"{seen} ({num_people} people seen)")
        hands = self.hand_detector(image.rgb, keypoints) if self.hand_detector is not None else None
        face = self.face_detector(image.rgb, keypoints) if self.face_detector is not None and not away else None
        return FitTarget(keypoints=keypoints, mask=mask, width=image.width, height=image.height, num_people=num_people, world_keypoints=world, hands=hands, face=face)

    def __call__(self, items: Sequence[TrackInput]) -> list[TrackResult | Rejected]:
        prepared = [self._prepare(item) for item in items]
        todo = [i for i, p in enumerate(prepared) if isinstance(p, FitTarget)]
        results: list[TrackResult | Rejected] = [p if isinstance(p, Rejected) else None for p in prepared]  # type: ignore[misc]
        if not todo:
            return results
        targets = [prepared[i] for i in todo]
        fit = fit_bodies(self.body, targets, self.config.fit)
        hand_fits = [None] * len(targets)
        if any(t.hands for t in targets):
            detected = torch.from_numpy(np.stack([t.keypoints for t in targets]).astype(np.float32))
            hand_fits = fit_hands(self.body, fit.shape, fit.pose, fit.transl, fit.intrinsics, [t.hands or {} for t in targets], self.config.hands, detected)
            fit.pose = torch.from_numpy(np.stack([h.pose for h in hand_fits])).to(fit.pose.dtype)
        face_fits = [None] * len(targets)
        if any(t.face is not None for t in targets):
            face_fits = fit_faces(self.body, fit.shape, fit.pose, fit.transl, fit.intrinsics, [t.face for t in targets], self.face_embedding, self.config.face)
            fit.pose = torch.stack([torch.from_numpy(f.pose) if f is not None else fit.pose[b] for b, f in enumerate(face_fits)]).to(fit.pose.dtype)
        with torch.no_grad():
            out = self.body(fit.shape.to(self.body.device), fit.pose.to(self.body.device), fit.transl.to(self.body.device))
            uv_all = project(out.vertices, fit.intrinsics.to(self.body.device)).cpu().numpy()
            if any(h is not None for h in hand_fits + face_fits):  # the arms may have moved with the hands, the head with the face
                fit.projected_keypoints = project(out.keypoints, fit.intrinsics.to(self.body.device)).cpu()
        faces = self.body.faces.cpu().numpy()
        for b, (i, target) in enumerate(zip(todo, targets)):
            quality = self._quality(target, fit.projected_keypoints[b].numpy(), uv_all[b], faces)
            if quality["reprojection_error_ratio"] > self.config.max_reprojection_error:
                results[i] = Rejected(
                    "fit_failed",
                    f"mean keypoint error {quality['reprojection_error_ratio']:.3f} of the person's height, over max_reprojection_error={self.config.max_reprojection_error}",
                )
                continue
            results[i] = TrackResult(
                body_model=self.body.name, shape=fit.shape[b].numpy(), pose=fit.pose[b].numpy(), transl=fit.transl[b].numpy(),
                intrinsics=fit.intrinsics[b].numpy(), width=target.width, height=target.height, keypoints=target.keypoints,
                projected_keypoints=fit.projected_keypoints[b].numpy(),
                mask=target.mask if target.mask is not None else np.zeros((target.height, target.width), bool),
                num_people=target.num_people, quality=quality, hands=_hand_record(target.hands, hand_fits[b]),
                face=_face_record(target.face, face_fits[b]),
            )  # fmt: skip
            quality["facing_angle_deg"] = results[i].facing_angle_deg
            quality["hands_tracked"] = float(sum(h["tracked"] for h in results[i].hands.values()))
            quality["face_tracked"] = float(bool(results[i].face.get("tracked")))
        return results

    def _quality(self, target: FitTarget, projected: np.ndarray, uv: np.ndarray, faces: np.ndarray) -> dict[str, float]:
        kp = target.keypoints
        vis = kp[:, 2] > self.config.fit.min_confidence
        err = np.linalg.norm(projected[vis] - kp[vis, :2], axis=1)
        box_h = float(kp[vis, 1].max() - kp[vis, 1].min()) if vis.sum() > 1 else float(target.height)
        if target.mask is not None and target.mask.any():
            ys = np.nonzero(target.mask.any(1))[0]
            box_h = max(box_h, float(ys.max() - ys.min() + 1))
        quality = {
            "reprojection_error_px": float(err.mean()),
            "reprojection_error_ratio": float(err.mean() / max(box_h, 1.0)),
            "visible_keypoints": float(vis.sum()),
            "mask_iou": float("nan"),
        }
        if target.mask is not None and target.mask.any():
            sil = rasterize_silhouette(uv, faces, target.width, target.height)
            quality["mask_iou"] = mask_iou(sil, resize_mask(target.mask, sil.shape))
        return quality
