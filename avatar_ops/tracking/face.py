"""Face: MediaPipe Face Mesh (bundled in the wheel) on a crop around the head at the photo's
resolution, then a fit of the head and neck rotation, the jaw (bodies with one: SMPL-X) and the
expression coefficients (SMPL-X) to its 468 landmarks.

* **Where each landmark sits on the body** (:func:`face_embedding`, computed once per body model).
  The body's own face is rendered from the front (its mean shape, shaded skin on grey) and Face
  Mesh is run on that picture; each landmark it finds becomes the surface point under it (a
  triangle and barycentric coordinates). So the landmarks mean on the body what they mean on a
  photo, for any body whose face Face Mesh recognises (Anny's, SMPL-X's), with no landmark table
  to license. A body whose face it does not recognise gets :class:`FaceCalibrationError`.
* **Crop.** A square around the head keypoints (nose, eyes, ears) ``crop_scale`` head widths on
  each side (at least ``min_crop`` pixels), so the face fills the crop as Face Mesh's short-range
  face detector expects; of the faces found, the one nearest the body's nose.
* **Fit.** With the body fixed, L-BFGS over the neck and head rotations (held near the body fit),
  the jaw (a hinge opening about the x axis, at most ``max_jaw_open``) and the expression (an L2
  prior): the landmarks' reprojection error in units of the face's height in the photo (robust,
  Geman-McClure), the face's outline weighted down (its landmarks slide along the silhouette) and
  the inner lips left out (on a closed mouth they sit on the lips' seam, on either lip).
* **Result.** Tracked or not, the landmarks and their fitted projections, the error in pixels,
  and the fitted head, neck and jaw rotations and expression. A face whose fit leaves an error over
  ``max_error`` face heights keeps the body fit's head and is not tracked.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from pydantic import Field

from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES, BodyModel, zero_pose
from avatar_ops.render.camera import project
from avatar_ops.render.mesh import rasterize_mesh
from avatar_ops.tracking.hands import square_crop
from avatar_ops.types import FrozenConfig

#: Face Mesh's landmark count (``refine_landmarks=False``).
NUM_FACE_LANDMARKS = 468
#: Landmarks used to measure the face in a photo: the top of the forehead and the chin.
FOREHEAD, CHIN = 10, 152
#: The inner lips (left out of the fit: on the body's closed mouth they sit on the lips' seam).
INNER_LIPS = (13, 14, 78, 80, 81, 82, 87, 88, 95, 178, 191, 308, 310, 311, 312, 317, 318, 324, 402, 415)
#: The face's outline (``FACEMESH_FACE_OVAL``).
FACE_OVAL = (
    10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176,
    234, 251, 284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454,
)  # fmt: skip
#: The pose joints the face fit turns: neck, head, jaw.
FACE_JOINTS = tuple(SMPLX_JOINT_NAMES.index(n) for n in ("neck", "head", "jaw"))
_HEAD_KEYPOINTS = [KEYPOINT_NAMES.index(n) for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]


class FaceConfig(FrozenConfig):
    """Face tracking settings."""

    enabled: bool = Field(True, description="Track the face (off: the head keeps the body fit's rotation, the jaw and expression stay neutral).")
    min_detection_confidence: float = Field(0.5, ge=0, le=1, description="Face Mesh's face detection threshold.")
    min_head_confidence: float = Field(0.5, ge=0, le=1, description="Head keypoints (nose, eyes, ears) below this confidence do not place the crop; fewer than two: no crop.")
    crop_scale: float = Field(1.5, gt=0, le=4, description="Half the crop's side, in head widths (ear to ear, or 2.2 eye distances).")
    min_crop: int = Field(48, ge=16, description="Smallest half side of a crop in pixels.")
    iters: int = Field(20, ge=0, le=200, description="Iterations of the face fit (L-BFGS with a strong Wolfe line search; it converges in about 20).")
    robust_scale: float = Field(0.1, gt=0, description="Geman-McClure scale of a landmark's error, in face heights.")
    outline_weight: float = Field(0.3, ge=0, le=1, description="Weight of the face outline's landmarks relative to the others.")
    head_prior_weight: float = Field(0.0001, ge=0, description="Weight holding the neck and head near the body fit's rotation (per squared radian).")
    jaw_limit_weight: float = Field(1.0, ge=0, description="Weight of the jaw's hinge limits.")
    max_jaw_open: float = Field(0.5, gt=0, le=1.0, description="Radians the jaw may open before its limit acts.")
    expression_weight: float = Field(0.0001, ge=0, description="Weight of the L2 prior on the expression coefficients.")
    max_error: float = Field(0.08, gt=0, description="Mean landmark error, in face heights, above which a face counts as not tracked.")


class FaceCalibrationError(RuntimeError):
    """The body's own face was not recognised by Face Mesh, so its landmarks cannot be placed."""


@dataclasses.dataclass
class FaceEmbedding:
    """The face landmarks as fixed averages of body vertices.

    Attributes:
        vertex_index: [N] the body vertices used.
        weights: [468, N] each landmark's barycentric weights over them (rows sum to 1).
    """

    vertex_index: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def from_triangles(cls, faces: torch.Tensor, triangle: torch.Tensor, bary: torch.Tensor) -> FaceEmbedding:
        """From each landmark's [468] triangle and [468, 3] barycentric coordinates."""
        if triangle.shape != (NUM_FACE_LANDMARKS,) or bary.shape != (NUM_FACE_LANDMARKS, 3):
            raise ValueError(f"`triangle` and `bary` must be [{NUM_FACE_LANDMARKS}] and [{NUM_FACE_LANDMARKS}, 3], got {tuple(triangle.shape)} and {tuple(bary.shape)}.")
        corners = faces[triangle]  # [468, 3]
        vertex_index, inverse = torch.unique(corners.reshape(-1), return_inverse=True)
        weights = torch.zeros(NUM_FACE_LANDMARKS, len(vertex_index), dtype=bary.dtype, device=bary.device)
        weights.scatter_add_(1, inverse.reshape(NUM_FACE_LANDMARKS, 3), bary)
        return cls(vertex_index.to(faces.device), weights)

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """[B, 468, 3] landmarks from [B, N, 3] posed vertices ``vertex_index``."""
        return torch.einsum("ln,bnc->blc", self.weights.to(vertices.dtype), vertices)


def _face_mesh(min_detection_confidence: float, max_faces: int):
    import mediapipe as mp  # deferred: heavy import

    return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False, min_detection_confidence=min_detection_confidence)


def face_embedding(body: BodyModel, size: int = 512) -> FaceEmbedding:
    """Where Face Mesh's landmarks sit on ``body`` (cached on it): its mean-shaped face rendered
    from the front in a ``size`` pixel picture, Face Mesh run on it, each landmark taken as the
    surface point under it. Raises :class:`FaceCalibrationError` when no face is found."""
    cached = getattr(body, "_face_embedding", None)
    if cached is not None:
        return cached
    with torch.no_grad():
        pose = zero_pose(1, device=body.device)
        pose[0, 0, 0] = torch.pi  # y-up body into the camera's y-down frame, facing the camera
        out = body(body.default_shape()[None], pose)
        eyes = out.keypoints[0, [KEYPOINT_NAMES.index("left_eye"), KEYPOINT_NAMES.index("right_eye")]].mean(0)
        # The eyes 3 cm above the picture's centre, 0.6 m away: the head fills about half of it.
        vertices = (out.vertices[0] - eyes + torch.tensor([0.0, -0.03, 0.6], device=body.device)).float()
        focal = 1.6 * size
        K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]], device=body.device)
        faces = body.faces
        rgb, fragments = shaded_picture(vertices, faces, K, size, size)
    mesh = _face_mesh(0.3, 1)
    try:
        result = mesh.process(rgb)
    finally:
        mesh.close()
    if not result.multi_face_landmarks:
        raise FaceCalibrationError(f"Face Mesh found no face on the {body.name} body's own front view, so face landmarks cannot be placed on it; set `tracking.face.enabled: false` for this body.")
    points = torch.tensor([(p.x * size, p.y * size) for p in result.multi_face_landmarks[0].landmark], dtype=torch.float32, device=body.device)
    uv = project(vertices[None], K[None])[0]
    triangle = torch.empty(NUM_FACE_LANDMARKS, dtype=torch.long, device=body.device)
    bary = torch.empty(NUM_FACE_LANDMARKS, 3, device=body.device)
    for i, (x, y) in enumerate(points.tolist()):
        col, row = min(max(int(x), 0), size - 1), min(max(int(y), 0), size - 1)
        window = fragments.face[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2].reshape(-1)
        window = window[window >= 0]
        if len(window) == 0:
            raise FaceCalibrationError(f"Face Mesh landmark {i} at ({x:.0f}, {y:.0f}) falls off the {body.name} body's surface in its calibration view.")
        f = int(fragments.face[row, col]) if int(fragments.face[row, col]) >= 0 else int(window[0])
        triangle[i] = f
        bary[i] = _barycentric(uv[faces[f]], points[i])
    body._face_embedding = FaceEmbedding.from_triangles(faces, triangle, bary)
    return body._face_embedding


def shaded_picture(vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, width: int, height: int) -> tuple[np.ndarray, object]:
    """[H, W, 3] uint8 picture of a mesh ([V, 3] camera-frame vertices) in skin colour, lit from
    the upper front, on grey, and its :class:`~avatar_ops.render.mesh.Fragments`."""
    fragments = rasterize_mesh(vertices, faces, K, width, height)
    corners = vertices[faces]
    normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    light = torch.tensor([0.3, -0.4, -1.0], device=vertices.device)
    shade = (normal[fragments.face.clamp(min=0)] @ (light / light.norm())).abs() * 0.8 + 0.2
    skin = torch.tensor([230.0, 190.0, 160.0], device=vertices.device)
    picture = torch.where(fragments.mask[..., None], shade[..., None] * skin, torch.full_like(skin, 90.0))
    return np.ascontiguousarray(picture.clamp(0, 255).byte().cpu().numpy()), fragments


def _barycentric(corners: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """[3] barycentric coordinates of a 2D ``point`` in a [3, 2] triangle, clamped inside it."""
    a, b, c = corners
    m = torch.stack([b - a, c - a], 1)
    if abs(float(torch.linalg.det(m))) < 1e-9:
        return torch.full((3,), 1 / 3, device=point.device)
    u, v = torch.linalg.solve(m, point - a).tolist()
    w = torch.tensor([1 - u - v, u, v], device=point.device).clamp(min=0)
    return w / w.sum()


@dataclasses.dataclass
class FaceObservation:
    """A face as Face Mesh saw it: ``keypoints`` [468, 2] photo pixels (its landmark order) and the
    ``crop`` (x0, y0, x1, y1) it was found in."""

    keypoints: np.ndarray
    crop: tuple[int, int, int, int]


def head_crop(keypoints: np.ndarray, width: int, height: int, config: FaceConfig) -> tuple[int, int, int, int] | None:
    """The crop (x0, y0, x1, y1) around the head of [K, 3] body keypoints, or None when fewer than
    two head keypoints are confidently seen or the crop misses the photo."""
    head = keypoints[_HEAD_KEYPOINTS]
    seen = head[:, 2] >= config.min_head_confidence
    if seen.sum() < 2:
        return None
    _, left_eye, right_eye, left_ear, right_ear = head
    spans = []
    if seen[3] and seen[4]:
        spans.append(float(np.linalg.norm(left_ear[:2] - right_ear[:2])))
    if seen[1] and seen[2]:
        spans.append(2.2 * float(np.linalg.norm(left_eye[:2] - right_eye[:2])))
    points = head[seen, :2]
    spans.append(float(np.max(np.linalg.norm(points[:, None] - points[None], axis=-1))))
    centre = points.mean(0)
    half = max(config.crop_scale * max(spans), float(config.min_crop))
    return square_crop(centre, half, width, height)


class FaceDetector:
    """``detector(rgb, body_keypoints) -> FaceObservation | None``."""

    def __init__(self, config: FaceConfig | None = None) -> None:
        self.config = config or FaceConfig()
        self._mesh = _face_mesh(self.config.min_detection_confidence, 2)

    def close(self) -> None:
        self._mesh.close()

    def __call__(self, rgb: np.ndarray, body_keypoints: np.ndarray) -> FaceObservation | None:
        h, w = rgb.shape[:2]
        crop = head_crop(body_keypoints, w, h, self.config)
        if crop is None:
            return None
        x0, y0, x1, y1 = crop
        result = self._mesh.process(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        head = body_keypoints[_HEAD_KEYPOINTS]
        anchor = head[head[:, 2] >= self.config.min_head_confidence, :2].mean(0)
        best = None
        for landmarks in result.multi_face_landmarks or []:
            points = np.array([(x0 + p.x * (x1 - x0), y0 + p.y * (y1 - y0)) for p in landmarks.landmark], np.float32)
            distance = float(np.linalg.norm(points.mean(0) - anchor))
            if best is None or distance < best[0]:
                best = (distance, points)
        return None if best is None else FaceObservation(best[1], crop)


@dataclasses.dataclass
class FaceFit:
    """One photo's face fit: the ``pose`` [55, 3] with its neck, head and jaw, the ``expression``
    [E] (None for a body without one), the landmarks' ``projected`` [468, 2] pixels, their mean
    ``error_px`` and whether it ``tracked``."""

    pose: np.ndarray
    expression: np.ndarray | None
    projected: np.ndarray
    error_px: float
    tracked: bool
    has_jaw: bool


def jaw_limit_penalty(jaw: torch.Tensor, max_open: float) -> torch.Tensor:
    """[B] limits on [B, 3] jaw rotations: it opens about +x (0 to ``max_open`` radians), and turns
    little sideways (y) and not about the face's axis (z)."""
    return torch.relu(-jaw[:, 0]) ** 2 + torch.relu(jaw[:, 0] - max_open) ** 2 + 4 * jaw[:, 1] ** 2 + 10 * jaw[:, 2] ** 2


def fit_faces(
    body: BodyModel, shape: torch.Tensor, pose: torch.Tensor, transl: torch.Tensor, intrinsics: torch.Tensor,
    observations: list[FaceObservation | None], embedding: FaceEmbedding, config: FaceConfig | None = None,
) -> list[FaceFit | None]:
    """Fit the faces of B photos at once, their bodies fixed (None where no face was seen).

    Args:
        body: the body model.
        shape, pose, transl, intrinsics: [B, S], [B, 55, 3], [B, 3], [B, 3, 3] the fitted bodies
            (camera frame).
        observations: per photo, the face seen (:class:`FaceDetector`) or None.
        embedding: where the landmarks sit on the body (:func:`face_embedding`).
        config: the fit's settings.
    """
    config = config or FaceConfig()
    device = body.device
    batch = len(observations)
    if batch != pose.shape[0]:
        raise ValueError(f"`observations` must hold one entry per body ({pose.shape[0]}), got {batch}.")
    present = torch.tensor([o is not None for o in observations], device=device)
    if not bool(present.any()):
        return [None] * batch
    target = torch.zeros(batch, NUM_FACE_LANDMARKS, 2, device=device)
    for b, seen in enumerate(observations):
        if seen is not None:
            target[b] = torch.from_numpy(np.asarray(seen.keypoints, np.float32)).to(device)
    size = (target[:, FOREHEAD] - target[:, CHIN]).norm(dim=-1).clamp(min=8.0)  # [B] pixels
    joints = torch.tensor(FACE_JOINTS, device=device)
    movable = torch.tensor([1.0, 1.0, 1.0 if body.has_jaw else 0.0], device=device)
    base = pose.to(device).clone()
    shape, transl, intrinsics = shape.to(device), transl.to(device), intrinsics.to(device)
    delta = torch.zeros(batch, len(FACE_JOINTS), 3, device=device, requires_grad=True)
    n_expr = body.num_expression_coeffs
    expression = torch.zeros(batch, n_expr, device=device, requires_grad=True)
    weight = torch.ones(NUM_FACE_LANDMARKS, device=device)
    weight[list(FACE_OVAL)] = config.outline_weight
    weight[list(INNER_LIPS)] = 0.0
    s2 = config.robust_scale**2

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        full = base.clone()
        full[:, joints] = base[:, joints] + present[:, None, None] * movable[None, :, None] * delta
        _, vertices = body.keypoints_and_vertices(shape, full, transl, embedding.vertex_index, expression * present[:, None] if n_expr else None)
        return full, project(embedding.landmarks(vertices), intrinsics)

    params = [delta] + ([expression] if n_expr else [])

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        full, uv = evaluate()
        r = ((uv - target) ** 2).sum(-1) / size[:, None] ** 2
        reprojection = (weight * s2 * r / (r + s2)).sum(1) / weight.sum()
        loss = reprojection + config.head_prior_weight * (delta[:, :2] ** 2).sum((1, 2))
        loss = loss + config.jaw_limit_weight * jaw_limit_penalty(full[:, FACE_JOINTS[2]], config.max_jaw_open)
        if n_expr:
            loss = loss + config.expression_weight * (expression**2).sum(1)
        total = (loss * present).sum()
        total.backward()
        return total

    # The photos' losses are independent, so one quasi-Newton run over their sum fits each. The
    # loss is in face sizes squared: a landmark 1 px off on a 100 px face adds 1e-4, and its
    # gradient is below torch's default stopping tolerance (1e-7) long before the fit converges.
    # With that default, where it stopped depended on the order of float sums: on the synthetic
    # SMPL-X face of the tests, 0.51 px with two threads, 1.02 px with one; now 0.44 and 0.51.
    optimiser = torch.optim.LBFGS(params, lr=1.0, max_iter=config.iters, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-12)
    if config.iters:
        optimiser.step(closure)
    with torch.no_grad():
        full, uv = evaluate()
        error = ((uv - target).norm(dim=-1) * weight).sum(1) / weight.sum()  # [B] pixels
    fits: list[FaceFit | None] = []
    for b in range(batch):
        if not bool(present[b]):
            fits.append(None)
            continue
        tracked = float(error[b] / size[b]) <= config.max_error
        fits.append(
            FaceFit(
                pose=(full[b] if tracked else base[b]).cpu().numpy(),
                expression=(expression[b].detach().cpu().numpy() if tracked else np.zeros(n_expr, np.float32)) if n_expr else None,
                projected=uv[b].cpu().numpy(), error_px=float(error[b]), tracked=tracked, has_jaw=body.has_jaw,
            )
        )  # fmt: skip
    return fits
