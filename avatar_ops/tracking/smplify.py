"""Batched SMPLify-style fit of body shape, pose, orientation and translation to 2D keypoints and a
person silhouette, in a pinhole camera (OpenCV axes: x right, y down, z forward).

Losses (per photo, summed over the batch):
    keypoints: confidence-weighted Geman-McClure reprojection error, in units of the person's height
    silhouette: the mesh's soft silhouette (every triangle splats its projected area, a long one in
        parts) against the person mask, both blurred: squared area error, in units of the mask's area
    priors: per-joint weighted L2 on the SMPL-X pose, hinge joint limits for knees and elbows,
        L2 on the shape latent
    limb directions: each limb towards the detector's metric direction (or its lifted one); a leg
        the photo does not show (a half-body photo) straight down, left alone by the silhouette
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES, BodyModel, zero_pose
from avatar_ops.body.parts import Part, body_parts
from avatar_ops.render.camera import intrinsics_for, project
from avatar_ops.types import FrozenConfig

# SMPL-X body joints (1..21) prior weights: stiff spine/collars/feet, free limbs.
_POSE_PRIOR = {
    "spine": 4.0, "neck": 4.0, "head": 2.0, "collar": 8.0, "shoulder": 0.3, "elbow": 0.2,
    "wrist": 2.0, "hip": 0.3, "knee": 0.2, "ankle": 2.0, "foot": 20.0,
}  # fmt: skip
_KP = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
TORSO = [_KP[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]
# Segments whose 3D direction the detector's metric landmarks constrain (a forearm bent towards the
# camera and one bent away project alike): limbs, feet, shoulders, hips.
# Each segment runs from the mean of its first keypoints to the mean of its second.
LIMBS = [
    ((_KP[a],), (_KP[b],)) for a, b in (
        ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
        ("left_hip", "left_knee"), ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
        ("left_ankle", "left_big_toe"), ("right_ankle", "right_big_toe"), ("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"),
    )
] + [((_KP["left_hip"], _KP["right_hip"]), (_KP["left_shoulder"], _KP["right_shoulder"]))]  # the torso's lean  # fmt: skip

# The limbs lifted by their foreshortening: legs and feet. The arms, the shoulder and hip lines and
# the torso's lean keep the metric landmarks' direction: their fitted lengths are too uncertain (a
# torso 5% longer than the photo's would be lifted 18 degrees out of the image plane), and with
# lifted arms the hoodie sample's animated hands went 21 CIELAB units from its skin (bound 20).
# Legs alone fit the 12 bench subjects as well as all limbs (PA-MPJPE 38.3 mm against 42.0).
LIFTED = (False,) * 4 + (True,) * 6 + (False,) * 3
# Each side's thigh and shin in LIMBS.
HANGING = {"left": (4, 5), "right": (6, 7)}


class BodyFitConfig(FrozenConfig):
    """Weights and schedule of the body fit."""

    focal_factor: float = Field(1.2, gt=0, description="Focal length in pixels as a multiple of the image's longer side (about 45 degrees field of view).")
    orient_iters: int = Field(30, ge=0, description="Iterations fitting only orientation and translation to the torso.")
    keypoint_iters: int = Field(40, ge=0, description="Iterations fitting pose and shape to the keypoints alone (cheap: no vertices).")
    iters: int = Field(50, ge=1, description="Iterations fitting everything, silhouette included (the silhouette term is the fit's costliest: every triangle of the mesh, every iteration).")
    init_elbow_flexion: float = Field(1.0, ge=0, le=2.5, description="Elbow flexion (radians) of the starting pose, so forearms can fold either way.")
    lr: float = Field(0.05, gt=0, description="Adam learning rate of the orientation and keypoint stages.")
    full_lr: float = Field(0.03, gt=0, description="Adam learning rate of the last stage (silhouette included): lower, so the fit settles in its basin.")
    keypoint_sigma: float = Field(0.2, gt=0, description="Geman-McClure scale of the keypoint residual, in person heights.")
    min_confidence: float = Field(0.3, ge=0, le=1, description="Keypoints below this confidence are ignored.")
    silhouette_weight: float = Field(0.03, ge=0, description="Weight of the silhouette term (squared area error between the mesh's soft silhouette and the mask, in units of the mask's area). A silhouette does not tell depth: a heavier weight bends limbs out of the image plane to match it, and the mask holds clothing and hair too.")
    pose_prior_weight: float = Field(0.0001, ge=0, description="Weight of the pose prior.")
    joint_limit_weight: float = Field(1.0, ge=0, description="Weight of the knee/elbow hinge limits.")
    shape_prior_weight: float = Field(0.0002, ge=0, description="Weight of the shape prior.")
    hanging_weight: float = Field(1.0, ge=0, description="Weight of the prior holding a leg the photo does not show (neither its knee nor its ankle confident: a half-body photo) straight down in the camera's frame, as a person stands; the silhouette terms leave such a leg alone (the mask's lower edge there is the frame's).")
    direction_weight: float = Field(0.02, ge=0, description="Weight of the prior pulling each limb's 3D direction towards its lifted direction (see `lift_limbs`).")
    lift_limbs: bool = Field(True, description="Lift each leg and foot out of the image plane by its foreshortening: the direction that puts the limb's far keypoint on its camera ray at the limb's fitted length (of the two such directions, the one on the side of the image plane the detector's metric landmarks put it; without those landmarks, a limb is not lifted). Off: the detector's metric directions themselves.")
    coverage_weight: float = Field(1.0, ge=0, description="Weight of mask the body leaves uncovered, relative to body outside the mask (below 1, loose clothing and hair pull the body out less).")
    mask_resolution: int = Field(192, ge=32, description="Longer side of the mask used by the silhouette term.")
    silhouette_blur: float = Field(1.0, gt=0, le=8, description="Standard deviation (pixels at mask_resolution) of the Gaussian blur applied to both silhouettes: it widens the term's reach beyond the silhouette's edge.")
    silhouette_split: float = Field(1.5, gt=0, description="Longest projected side (pixels at mask_resolution, as the last stage starts) of a triangle splatted whole: a longer one is cut into n x n parts (n up to 4), each splatting its share at its centroid. Splatted at one point, long triangles leave holes in the true body's soft silhouette, and the fit bends the body to fill them.")


@dataclasses.dataclass
class FitTarget:
    """What one photo gives the fit.

    Attributes:
        keypoints: [K, 3] (x, y, confidence) pixels.
        mask: [H, W] bool person mask, or None.
        width, height: image size in pixels.
        num_people: people seen in the photo (carried through to the result).
        world_keypoints: [K, 4] the detector's metric 3D keypoints (camera-aligned axes, then
            visibility), or None: a prior on the 3D direction of each limb.
    """

    keypoints: np.ndarray
    mask: np.ndarray | None
    width: int
    height: int
    num_people: int = 1
    world_keypoints: np.ndarray | None = None
    hands: dict | None = None  # side -> HandObservation (avatar_ops.tracking.hands); not used by the body fit
    face: object | None = None  # FaceObservation (avatar_ops.tracking.face); not used by the body fit


@dataclasses.dataclass
class FitResult:
    """Fitted parameters, [B, ...] tensors on the CPU."""

    shape: Tensor  # [B, S]
    pose: Tensor  # [B, 55, 3] SMPL-X axis-angle, camera frame
    transl: Tensor  # [B, 3] metres, camera frame
    intrinsics: Tensor  # [B, 3, 3]
    projected_keypoints: Tensor  # [B, K, 2] pixels


def lifted_directions(head: Tensor, tail: Tensor, observed: Tensor, intrinsics: Tensor, guide: Tensor) -> Tensor:
    """Each limb's 3D direction as its foreshortening gives it (Taylor's lifting, in perspective).

    The limb keeps its fitted head and length; its tail goes on the camera ray through the observed
    tail keypoint, at one of the two points of that ray at that length from the head: the one on
    the same side of the image plane as ``guide`` (a guide much flatter than the truth still
    chooses right). In perspective a limb parallel to the image is one of the two, not their
    midpoint. A limb longer in the photo than its fitted length gets the point of the ray nearest
    its head.

    Args:
        head, tail: [B, L, 3] the fitted ends of each limb (camera frame, metres).
        observed: [B, L, 2] the observed tail, pixels.
        intrinsics: [B, 3, 3].
        guide: [B, L, 3] unit directions that choose between the two points (the detector's
            metric directions).
    Returns:
        [B, L, 3] unit directions, no gradient.
    """
    with torch.no_grad():
        k = intrinsics[:, None]
        ray = torch.stack([(observed[..., 0] - k[..., 0, 2]) / k[..., 0, 0], (observed[..., 1] - k[..., 1, 2]) / k[..., 1, 1], torch.ones_like(observed[..., 0])], -1)
        length2 = ((tail - head) ** 2).sum(-1)
        dd, da, aa = (ray * ray).sum(-1), (ray * head).sum(-1), (head * head).sum(-1)
        root = (da**2 - dd * (aa - length2)).clamp(min=0).sqrt()
        unit = lambda v: v / v.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        near, far = (unit(((da + sign * root) / dd)[..., None] * ray - head) for sign in (-1.0, 1.0))
        # The side of the image plane the guide's depth is on decides; where both points (or
        # neither) are on that side, the one nearer it in depth.
        side_far, side_near = (torch.sign(d[..., 2]) == torch.sign(guide[..., 2]) for d in (far, near))
        nearer = (far[..., 2] - guide[..., 2]).abs() < (near[..., 2] - guide[..., 2]).abs()
        pick_far = torch.where(side_far != side_near, side_far, nearer)
        return torch.where(pick_far[..., None], far, near)


def _pose_prior_weights(device) -> Tensor:
    w = torch.zeros(len(SMPLX_JOINT_NAMES), device=device)
    for j, name in enumerate(SMPLX_JOINT_NAMES[1:22], start=1):
        w[j] = next(v for k, v in _POSE_PRIOR.items() if k in name)
    return w


def joint_limit_penalty(pose: Tensor) -> Tensor:
    """[B, 55, 3] -> [B]: knees bend about +x only, elbows about -y (left) / +y (right)."""
    j = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    pen = torch.zeros(pose.shape[0], device=pose.device, dtype=pose.dtype)
    for knee in ("left_knee", "right_knee"):
        p = pose[:, j[knee]]
        pen = pen + torch.relu(-p[:, 0]) ** 2 * 10 + (p[:, 1] ** 2 + p[:, 2] ** 2) * 4
    for elbow, sign in (("left_elbow", -1.0), ("right_elbow", 1.0)):
        p = pose[:, j[elbow]]
        pen = pen + torch.relu(-sign * p[:, 1]) ** 2 * 10 + p[:, 2] ** 2 * 4 + p[:, 0] ** 2 * 0.5
    return pen


def _part_centroids(n: int) -> Tensor:
    """[n * n, 3] the barycentric weights of the centroids of the n x n parts a triangle's sides'
    n-sections cut it into (every part of equal area)."""
    points = []
    for i in range(n):
        for j in range(n - i):
            points.append((i + 1 / 3, j + 1 / 3))  # the part pointing like the triangle
            if i + j < n - 1:
                points.append((i + 2 / 3, j + 2 / 3))  # the part pointing the other way
    uv = torch.tensor(points, dtype=torch.float64) / n
    return torch.cat([1 - uv.sum(1, keepdim=True), uv], 1).float()


class _Silhouette:
    """The soft silhouette of the whole mesh against each photo's mask, at a reduced resolution.

    Every triangle splats its projected area bilinearly at its centroid: half its absolute area,
    since a closed surface covers each pixel it projects onto as often from behind as in front.
    The covered fraction (the density, at most 1: where a limb crosses the torso it is 2) and the
    mask's area fraction are blurred alike, so the loss is least where the two silhouettes agree,
    not where the body is shrunk or grown by a margin (a body matching the mask exactly scores 0).
    """

    MAX_SPLIT = 4

    def __init__(self, targets: list[FitTarget], config: BodyFitConfig, device) -> None:
        res = config.mask_resolution
        masks, scales = [], []
        for t in targets:
            scale = res / max(t.width, t.height)
            h, w = max(1, round(t.height * scale)), max(1, round(t.width * scale))
            m = np.zeros((res, res), np.float32)
            if t.mask is not None and t.mask.any():
                full = torch.from_numpy(t.mask.astype(np.float32))[None, None]
                m[:h, :w] = torch.nn.functional.interpolate(full, size=(h, w), mode="area")[0, 0].numpy()
            masks.append(m)
            scales.append(scale)
        self.res = res
        radius = max(1, math.ceil(3 * config.silhouette_blur))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
        kernel = torch.exp(-0.5 * (x / config.silhouette_blur) ** 2)
        self.kernel = kernel / kernel.sum()
        mask = torch.from_numpy(np.stack(masks)).to(device)  # [B, R, R]
        area = mask.sum((1, 2))
        self.valid = area > 0
        self.area = area.clamp(min=1.0)
        self.mask = self._blur(mask)
        self.scale = torch.tensor(scales, device=device)  # [B]
        self.split_side = config.silhouette_split
        self.groups: list[tuple[Tensor, Tensor]] = []  # see split(); empty: every triangle whole

    def _blur(self, image: Tensor) -> Tensor:
        """[B, R, R] -> [B, R, R], separable Gaussian, zero outside (as sums of shifted copies:
        on the CPU a one-channel conv2d's backward costs several times as much)."""
        r = (len(self.kernel) - 1) // 2
        res = image.shape[-1]
        x = torch.nn.functional.pad(image, (r, r, 0, 0))
        x = sum(w * x[..., i : i + res] for i, w in enumerate(self.kernel.tolist()))
        x = torch.nn.functional.pad(x, (0, 0, r, r))
        return sum(w * x[:, i : i + res] for i, w in enumerate(self.kernel.tolist()))

    def _triangles(self, uv: Tensor, faces: Tensor) -> Tensor:
        """[B, V, 2] projected vertices (full-res pixels), [F, 3] faces -> [B, F, 3, 2] each
        triangle's corners in reduced pixels."""
        small = uv * self.scale[:, None, None]
        # index_select, not indexing: the backward of indexing accumulates in parallel on the CPU
        # in no fixed order, and the fit amplifies the last bits into a different pose.
        return torch.stack([small.index_select(1, faces[:, c]) for c in range(3)], 2)

    def split(self, uv: Tensor, faces: Tensor) -> None:
        """Cut each triangle into n x n parts for splatting, n the fewest that bring its longest
        projected side (in any photo; ``uv``: [B, V, 2] full-res pixels) to ``split_side`` reduced
        pixels or less, at most ``MAX_SPLIT``.

        Splatted at its centroid alone, a triangle a few pixels long leaves gaps and piles between
        its neighbours' centroids: the clamped coverage of the true body then has holes in stripes
        (the near leg of a stride), and the fit bends the body to fill them.
        """
        with torch.no_grad():
            tri = self._triangles(uv, faces)
            side = (tri - tri.roll(1, dims=2)).norm(dim=-1).amax(dim=(0, 2))  # [F]
            parts = (side / self.split_side).ceil().clamp(1, self.MAX_SPLIT).long()
            self.groups = []
            for n in range(1, self.MAX_SPLIT + 1):
                index = torch.nonzero(parts == n)[:, 0]
                if len(index):
                    self.groups.append((index, _part_centroids(n).to(uv)))

    def coverage(self, uv: Tensor, faces: Tensor, used: Tensor) -> Tensor:
        """[B, V, 2] projected vertices (full-res pixels), [F, 3] faces, [B, F] float weights ->
        [B, R, R] the fraction of each reduced pixel the triangles cover (unblurred).

        Each triangle splats its area bilinearly at its centroid, or, cut into parts by
        :meth:`split`, a share at each part's centroid.
        """
        res = self.res
        tri = self._triangles(uv, faces)
        e1, e2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
        area = 0.25 * (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).abs() * used
        groups = self.groups or [(torch.arange(len(faces), device=uv.device), _part_centroids(1).to(uv))]
        centres, areas = [], []
        for index, weights in groups:
            centres.append(torch.einsum("sc,bfcd->bfsd", weights, tri.index_select(1, index)).flatten(1, 2))
            areas.append((area.index_select(1, index) / len(weights)).repeat_interleave(len(weights), dim=1))
        centre = torch.cat(centres, 1) - 0.5  # pixel i's centre is at i + 0.5
        area = torch.cat(areas, 1)
        base = centre.floor()
        frac = centre - base
        density = torch.zeros(uv.shape[0], res * res, device=uv.device, dtype=uv.dtype)
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = base[..., 0].long() + dx, base[..., 1].long() + dy
                weight = (frac[..., 0] if dx else 1 - frac[..., 0]) * (frac[..., 1] if dy else 1 - frac[..., 1])
                inside = (xi >= 0) & (xi < res) & (yi >= 0) & (yi < res)
                density = density.scatter_add(1, (yi * res + xi).clamp(0, res * res - 1), area * weight * inside)
        return density.view(-1, res, res).clamp(max=1.0)

    def loss(self, uv: Tensor, faces: Tensor, used: Tensor, coverage_weight: float) -> Tensor:
        """uv: [B, V, 2] every projected vertex (full-res pixels); faces: [F, 3]; used: [B, F]
        float, the triangles the silhouette may move -> [B]."""
        diff = self._blur(self.coverage(uv, faces, used)) - self.mask
        err = (torch.relu(diff) ** 2 + coverage_weight * torch.relu(-diff) ** 2).sum((1, 2)) / self.area
        return torch.where(self.valid, err, torch.zeros_like(err))


def _world_frame(world: np.ndarray, min_confidence: float) -> np.ndarray | None:
    """[3, 3] rotation taking the body's canonical frame (y up, facing +z, its left at +x) into the
    camera's, from the detector's metric hips and shoulders; None when they are not trusted."""
    ls, rs, lh, rh = (_KP[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
    if (world[[ls, rs, lh, rh], 3] <= min_confidence).any():
        return None
    left = world[ls, :3] - world[rs, :3] + world[lh, :3] - world[rh, :3]
    up = 0.5 * (world[ls, :3] + world[rs, :3] - world[lh, :3] - world[rh, :3])
    if np.linalg.norm(left) < 1e-3 or np.linalg.norm(up) < 1e-3:
        return None
    left = left / np.linalg.norm(left)
    forward = np.cross(left, up)
    forward /= np.linalg.norm(forward)
    up = np.cross(forward, left)
    return np.stack([left, up, forward], 1)


#: Keypoints a detector places on a face; on a person seen from behind it can only guess them.
FACE_KEYPOINTS = [_KP[n] for n in ("nose", "left_eye", "right_eye")]


def faces_away(keypoints: np.ndarray, world: np.ndarray | None, min_confidence: float) -> bool:
    """Whether the person turns their back to the camera, as the body fit's start decides it: by
    the detector's metric hips and shoulders where trusted (their front pointing away from the
    camera), else by the left/right order of the shoulders in the image."""
    frame = _world_frame(world, min_confidence) if world is not None else None
    if frame is not None:
        return bool(frame[2, 2] > 0)  # the body's forward axis points away from the camera (+z)
    ls, rs = _KP["left_shoulder"], _KP["right_shoulder"]
    if keypoints[ls, 2] > min_confidence and keypoints[rs, 2] > min_confidence:
        return bool(keypoints[ls, 0] < keypoints[rs, 0])
    return False


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (axis-angle [3]) taking direction ``a`` onto ``b``."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    axis = np.cross(a, b)
    sin, cos = np.linalg.norm(axis), float(np.clip(a @ b, -1, 1))
    if sin < 1e-8:
        return np.zeros(3) if cos > 0 else np.array([0.0, 0.0, math.pi])
    return axis / sin * math.atan2(sin, cos)


def _pose_from_world(world: np.ndarray, frame: np.ndarray, min_confidence: float) -> dict[str, np.ndarray]:
    """Starting rotations of the shoulders, elbows, hips and knees (SMPL-X axis-angle by joint
    name) pointing each limb along the detector's metric landmarks, in the body frame ``frame``."""
    from avatar_ops.body.rotations import axis_angle_to_matrix

    rot = lambda aa: axis_angle_to_matrix(torch.tensor(aa, dtype=torch.float32)).numpy()
    out: dict[str, np.ndarray] = {}
    chains = (("left", "shoulder", "elbow", "wrist", "shoulder", "elbow", np.array([1.0, 0, 0])),
              ("right", "shoulder", "elbow", "wrist", "shoulder", "elbow", np.array([-1.0, 0, 0])),
              ("left", "hip", "knee", "ankle", "hip", "knee", np.array([0, -1.0, 0])),
              ("right", "hip", "knee", "ankle", "hip", "knee", np.array([0, -1.0, 0])))  # fmt: skip
    for side, root, mid, end, root_joint, mid_joint, rest in chains:
        a, b, c = (_KP[f"{side}_{n}"] for n in (root, mid, end))
        if (world[[a, b], 3] <= min_confidence).any():
            continue
        upper = frame.T @ (world[b, :3] - world[a, :3])
        first = _rotation_between(rest, upper)
        out[f"{side}_{root_joint}"] = first
        if world[c, 3] > min_confidence:
            lower = rot(first).T @ (frame.T @ (world[c, :3] - world[b, :3]))
            out[f"{side}_{mid_joint}"] = _rotation_between(rest, lower)
    return out


def _initial_guess(body: BodyModel, targets: list[FitTarget], intrinsics: Tensor, config: BodyFitConfig) -> tuple[Tensor, Tensor, list[dict[str, np.ndarray]]]:
    """Global orientation and translation from the torso, and limb rotations where the detector's
    metric landmarks give them. Without those: facing or turned away from the camera, by the
    left/right order of the shoulders."""
    from avatar_ops.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    device = intrinsics.device
    with torch.no_grad():
        rest = body(body.default_shape()[None], zero_pose(1, device=device)).keypoints[0]
    kp3 = rest.cpu().numpy()
    orient, transl, limbs = [], [], []
    for t, k in zip(targets, intrinsics.cpu().numpy()):
        kp = t.keypoints
        conf = kp[:, 2] > config.min_confidence
        f = k[0, 0]
        ls, rs, lh, rh = (_KP[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
        frame = _world_frame(t.world_keypoints, config.min_confidence) if t.world_keypoints is not None else None
        if frame is None:
            # Flip y-up/+z-facing body into the camera's y-down frame, facing the camera (-z) or
            # turned away by the shoulders' order.
            flip = [0.0, 0.0, math.pi] if faces_away(kp, None, config.min_confidence) else [math.pi, 0.0, 0.0]
            frame = axis_angle_to_matrix(torch.tensor(flip)).numpy()
            orient.append(flip)
            limbs.append({})
        else:
            orient.append(matrix_to_axis_angle(torch.from_numpy(frame.astype(np.float32))[None])[0].tolist())
            away = frame[2, 2] > 0  # as faces_away decides it
            limbs.append({} if away else _pose_from_world(t.world_keypoints, frame, config.min_confidence))
        pairs = [(a, b) for a, b in ((ls, lh), (rs, rh), (ls, rs), (lh, rh)) if conf[a] and conf[b]]
        if pairs:
            ratios = [np.linalg.norm(kp3[a] - kp3[b]) / max(np.linalg.norm(kp[a, :2] - kp[b, :2]), 1.0) for a, b in pairs]
            z = f * float(np.median(ratios))
        else:
            valid = kp[conf]
            span = (valid[:, 1].max() - valid[:, 1].min()) if len(valid) > 1 else t.height / 2
            z = f * 1.0 / max(span, 1.0)
        used = [i for i in TORSO if conf[i]] or list(np.nonzero(conf)[0])
        centre2d = kp[used, :2].mean(0)
        centre3d = frame @ kp3[used].mean(0)
        x = (centre2d[0] - k[0, 2]) * z / f - centre3d[0]
        y = (centre2d[1] - k[1, 2]) * z / f - centre3d[1]
        transl.append([x, y, z - centre3d[2]])
    return torch.tensor(orient, device=device, dtype=torch.float32), torch.tensor(transl, device=device, dtype=torch.float32), limbs


def fit_bodies(body: BodyModel, targets: list[FitTarget], config: BodyFitConfig | None = None) -> FitResult:
    """Fit ``body`` to every target at once.

    Args:
        body: a :class:`BodyModel`.
        targets: one :class:`FitTarget` per photo (batched together).
        config: weights and schedule.
    """
    if not targets:
        raise ValueError("`targets` must hold at least one photo, got an empty list.")
    config = config or BodyFitConfig()
    device = body.device
    batch = len(targets)
    intrinsics = torch.from_numpy(np.stack([intrinsics_for(t.width, t.height, config.focal_factor) for t in targets])).to(device)
    kp = torch.from_numpy(np.stack([t.keypoints for t in targets])).to(device)
    conf = kp[..., 2] * (kp[..., 2] > config.min_confidence)
    heights = []
    for b in range(batch):
        pts = kp[b, conf[b] > 0, :2]
        heights.append(float(pts[:, 1].max() - pts[:, 1].min()) if len(pts) > 1 else float(targets[b].height))
    norm = torch.tensor(heights, device=device).clamp(min=16.0)
    sil = _Silhouette(targets, config, device)
    # Limb directions from the detector's metric landmarks, where it gave them: [B, L, 3], [B, L].
    ends = torch.zeros(2, len(LIMBS), len(KEYPOINT_NAMES), device=device)  # averaging weights of each segment's two ends
    for i, (head, tail) in enumerate(LIMBS):
        ends[0, i, list(head)] = 1.0 / len(head)
        ends[1, i, list(tail)] = 1.0 / len(tail)
    world = torch.zeros(batch, len(KEYPOINT_NAMES), 4, device=device)
    for b, t in enumerate(targets):
        if t.world_keypoints is not None:
            world[b] = torch.from_numpy(np.asarray(t.world_keypoints, dtype=np.float32)).to(device)
    limb = torch.einsum("lk,bkc->blc", ends[1] - ends[0], world[..., :3])
    limb_dir = limb / limb.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    trusted = (world[..., 3] > config.min_confidence).float()  # [B, K]
    needs = ((ends[0] + ends[1]) > 0).float()  # [L, K] a segment needs all its keypoints
    limb_conf = (torch.einsum("lk,bk->bl", needs, 1 - trusted) == 0).float()
    limb_conf = limb_conf * (limb.norm(dim=-1) > 1e-3)
    # Of a person seen from behind, the detector's metric limbs are not to be trusted in depth (on
    # the quality benchmark's subjects photographed from behind they twist the legs about their
    # axes): they decide the facing only.
    away = torch.tensor([faces_away(t.keypoints, t.world_keypoints, config.min_confidence) for t in targets], device=device)
    limb_conf = limb_conf * (~away)[:, None]
    # Lifting needs the observed 2D ends; its sign comes from the metric landmarks where trusted.
    seen = (kp[..., 2] > config.min_confidence).float()
    lift_conf = (torch.einsum("lk,bk->bl", needs, 1 - seen) == 0).float()
    observed_tail = torch.einsum("lk,bkc->blc", ends[1], kp[..., :2])
    lifted_limb = torch.tensor(LIFTED, device=device)
    every_vertex = torch.arange(body.num_vertices, device=device)
    faces = body.faces.to(device)
    # Legs the photo does not show (neither knee nor ankle confident): they hang straight down, and
    # the silhouette leaves them alone (fitted to a mask the frame cuts off, they fold away behind
    # the body, out of the photo's sight).
    parts = body_parts(body)
    hanging_side = torch.stack([(kp[:, [_KP[f"{side}_knee"], _KP[f"{side}_ankle"]], 2] <= config.min_confidence).all(1) for side in ("left", "right")], 1)  # [B, 2]
    leg = torch.isin(parts.part, torch.tensor([int(Part.THIGH), int(Part.SHIN), int(Part.FOOT)], device=device))
    hung = torch.stack([leg & (parts.side == 1), leg & (parts.side == -1)])  # [2, V]
    sil_used = (~((hanging_side[:, :, None] & hung[None]).any(1)))[:, faces].all(2).float()  # [B, F] triangles
    hanging = torch.zeros(batch, len(LIMBS), dtype=torch.bool, device=device)
    hanging[:, list(HANGING["left"])] = hanging_side[:, :1]
    hanging[:, list(HANGING["right"])] = hanging_side[:, 1:]
    down = torch.tensor([0.0, 1.0, 0.0], device=device)  # the camera's y points down
    prior_w = _pose_prior_weights(device)

    orient0, transl0, limbs0 = _initial_guess(body, targets, intrinsics, config)
    orient = orient0.clone().requires_grad_(True)
    transl = transl0.clone().requires_grad_(True)
    # Start with the arms lowered (SMPLify starts from a mean pose, not the T-pose).
    body_pose = torch.zeros(batch, 21, 3, device=device)
    body_pose[:, SMPLX_JOINT_NAMES.index("left_shoulder") - 1, 2] = -1.1
    body_pose[:, SMPLX_JOINT_NAMES.index("right_shoulder") - 1, 2] = 1.1
    body_pose[:, SMPLX_JOINT_NAMES.index("left_elbow") - 1, 1] = -config.init_elbow_flexion
    body_pose[:, SMPLX_JOINT_NAMES.index("right_elbow") - 1, 1] = config.init_elbow_flexion
    for b, limbs in enumerate(limbs0):  # limbs pointed where the detector's metric landmarks say
        for name, value in limbs.items():
            body_pose[b, SMPLX_JOINT_NAMES.index(name) - 1] = torch.as_tensor(value, dtype=body_pose.dtype, device=device)
    body_pose.requires_grad_(True)
    latent = body.latent_from_shape(body.default_shape()).expand(batch, -1).clone().requires_grad_(True)
    rest = zero_pose(batch, device=device)[:, 22:]

    no_vertices = every_vertex[:0]

    def evaluate(stage: str) -> tuple[Tensor, Tensor]:
        """stage: ``orient`` (torso keypoints, orientation and translation), ``keypoints``
        (everything but the silhouette) or ``full``."""
        free = stage != "orient"
        pose = torch.cat([orient[:, None], body_pose if free else body_pose.detach(), rest], dim=1)
        shape = body.shape_from_latent(latent if free else latent.detach())
        keypoints, vertices = body.keypoints_and_vertices(shape, pose, transl, every_vertex if stage == "full" else no_vertices)
        uv = project(keypoints, intrinsics)
        head, tail = torch.einsum("lk,bkc->blc", ends[0], keypoints), torch.einsum("lk,bkc->blc", ends[1], keypoints)
        fitted = tail - head
        if config.lift_limbs:
            lifted = lifted_directions(head, tail, observed_tail, intrinsics, limb_dir)
            target = torch.where(lifted_limb[:, None], lifted, limb_dir)
            weight = torch.where(lifted_limb, lift_conf, 1.0) * limb_conf
        else:
            target, weight = limb_dir, limb_conf
        cosine = (fitted * target).sum(-1) / fitted.norm(dim=-1).clamp(min=1e-6)
        weight = weight * ~hanging
        direction = (weight * (1 - cosine)).sum(1) / weight.sum(1).clamp(min=1e-3)
        hang = (hanging * (1 - (fitted * down).sum(-1) / fitted.norm(dim=-1).clamp(min=1e-6))).sum(1)
        r = ((uv - kp[..., :2]) ** 2).sum(-1) / norm[:, None] ** 2
        s2 = config.keypoint_sigma**2
        w = conf if free else conf * torch.isin(torch.arange(conf.shape[1], device=device), torch.tensor(TORSO, device=device))
        loss = (w * s2 * r / (r + s2)).sum(1) / w.sum(1).clamp(min=1e-3)
        loss = loss + config.direction_weight * direction + config.hanging_weight * hang
        if free:
            loss = loss + config.pose_prior_weight * (prior_w[None, 1:22, None] * body_pose**2).sum((1, 2))
            loss = loss + config.joint_limit_weight * 0.01 * joint_limit_penalty(pose)
            loss = loss + config.shape_prior_weight * (latent**2).sum(1)
        if stage == "full":
            loss = loss + config.silhouette_weight * sil.loss(project(vertices, intrinsics), faces, sil_used, config.coverage_weight)
        return loss.sum(), uv

    for stage, params, iters, lr in (
        ("orient", [orient, transl], config.orient_iters, config.lr),
        ("keypoints", [orient, transl, body_pose, latent], config.keypoint_iters, config.lr),
        ("full", [orient, transl, body_pose, latent], config.iters, config.full_lr),
    ):
        if stage == "full" and iters:
            with torch.no_grad():
                pose = torch.cat([orient[:, None], body_pose, rest], dim=1)
                _, vertices = body.keypoints_and_vertices(body.shape_from_latent(latent), pose, transl, every_vertex)
                sil.split(project(vertices, intrinsics), faces)
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(iters):
            opt.zero_grad()
            loss, _ = evaluate(stage)
            loss.backward()
            opt.step()
    with torch.no_grad():
        _, uv = evaluate("keypoints")
        pose = torch.cat([orient[:, None], body_pose, rest], dim=1)
        shape = body.shape_from_latent(latent)
    return FitResult(shape=shape.detach().cpu(), pose=pose.detach().cpu(), transl=transl.detach().cpu(), intrinsics=intrinsics.cpu(), projected_keypoints=uv.cpu())
