"""The body-model interface every backend implements, and the SMPL-X conventions it speaks.

Pose always arrives in SMPL-X convention: 55 axis-angle rotations (global orient, 21 body joints,
jaw, two eyes, 15 + 15 hand joints), each a local rotation about its joint in world-aligned axes
of the T-pose, so the same motion clip drives every backend. Coordinates: metres, y up, the body
facing +z, the subject's left at +x (SMPL-X's canonical frame).
"""

from __future__ import annotations

import abc
import dataclasses

import torch
from torch import Tensor, nn

SMPLX_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "jaw", "left_eye", "right_eye",
    "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2", "right_middle3",
    "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2", "right_ring3",
    "right_thumb1", "right_thumb2", "right_thumb3",
)  # fmt: skip
SMPLX_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip
NUM_POSE_JOINTS = 55
NUM_BODY_JOINTS = 21  # body_pose, without the global orientation

# 2D/3D keypoints every backend regresses: COCO-17 then six foot points (COCO-WholeBody order).
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)  # fmt: skip
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# Hand landmarks, MediaPipe Hands' 21 in its order (wrist, then four per finger from the base to
# the tip), and the SMPL-X joint at each (None: the fingertip, a surface point).
FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
HAND_LANDMARK_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{finger}_{part}" for finger in FINGERS for part in (("cmc", "mcp", "ip", "tip") if finger == "thumb" else ("mcp", "pip", "dip", "tip"))
)
HAND_SIDES: tuple[str, ...] = ("left", "right")


def hand_landmark_joint(side: str, landmark: int) -> str | None:
    """The SMPL-X joint at hand landmark ``landmark`` of ``side`` (None for a fingertip)."""
    if landmark == 0:
        return f"{side}_wrist"
    finger, part = divmod(landmark - 1, 4)
    return None if part == 3 else f"{side}_{FINGERS[finger]}{part + 1}"


@dataclasses.dataclass
class BodyOutput:
    """A batched forward pass of a body model (SMPL-X frame, metres).

    Attributes:
        vertices: [B, V, 3] posed vertices.
        joints: [B, J, 3] posed joint (bone head) positions of the backend's own skeleton.
        keypoints: [B, K, 3] the :data:`KEYPOINT_NAMES` keypoints.
        joint_transforms: [B, J, 4, 4] rest-to-posed rigid transforms for linear blend skinning.
        rest_vertices: [B, V, 3] vertices of the shaped body in its rest pose.
    """

    vertices: Tensor
    joints: Tensor
    keypoints: Tensor
    joint_transforms: Tensor
    rest_vertices: Tensor


@dataclasses.dataclass
class BindPose:
    """A shaped body's rest pose, the pose its skinning starts from (SMPL-X frame, metres).

    Linear blend skinning with the body's weights, ``sum_j w_j T_j v`` over these ``vertices``
    with ``T_j = BodyOutput.joint_transforms[j]``, gives the posed vertices (SMPL-X adds its pose
    corrective blendshapes on top). ``T_j @ joints[j]`` is joint ``j``'s posed frame, a rigid
    transform, which is what a glTF skeleton animates.

    Attributes:
        vertices: [V, 3] the rest vertices.
        joints: [J, 4, 4] each joint's rest frame (rigid, joint-to-body), in ``joint_names`` order.
        parents: [J] each joint's parent index, -1 for the root; parents come first.
    """

    vertices: Tensor
    joints: Tensor
    parents: list[int]


class BodyModel(nn.Module, abc.ABC):
    """A parametric body driven by shape parameters and an SMPL-X pose.

    Subclasses set ``name``, ``faces`` [F, 3] (long), ``skinning_weights`` [V, J],
    ``joint_names`` and ``num_shape_params``.
    """

    name: str
    joint_names: list[str]
    num_shape_params: int

    @property
    def faces(self) -> Tensor:
        return self._faces

    @property
    def skinning_weights(self) -> Tensor:
        return self._skinning_weights

    @property
    def num_vertices(self) -> int:
        return int(self._skinning_weights.shape[0])

    @property
    def device(self) -> torch.device:
        return self._faces.device

    @property
    def num_expression_coeffs(self) -> int:
        """Facial expression coefficients the body takes (``expression`` [B, E]); 0 for a body
        without expression blendshapes."""
        return 0

    @property
    def has_jaw(self) -> bool:
        """Whether the SMPL-X jaw joint (pose index 22) moves part of this body."""
        return self.smplx_joint_bones()[SMPLX_JOINT_NAMES.index("jaw")] >= 0

    def smplx_skinning_weights(self) -> Tensor:
        """[V, 55] each vertex's skinning weights gathered onto the SMPL-X joints that drive its
        bones (for a backend whose skeleton is SMPL-X's, its own weights)."""
        if tuple(self.joint_names) != SMPLX_JOINT_NAMES:
            raise NotImplementedError(f"{type(self).__name__} has its own skeleton and must map it onto the SMPL-X joints.")
        return self._skinning_weights

    def smplx_joint_bones(self) -> list[int]:
        """For each of the 55 SMPL-X joints, the index (in ``joint_names``) of the backend joint whose
        head sits at it (its own skeleton's first bone driven by that joint), -1 if none."""
        if tuple(self.joint_names) != SMPLX_JOINT_NAMES:
            raise NotImplementedError(f"{type(self).__name__} has its own skeleton and must map it onto the SMPL-X joints.")
        return list(range(len(SMPLX_JOINT_NAMES)))

    def hand_regressor(self) -> tuple[Tensor, Tensor]:
        """The hand landmarks (:data:`HAND_LANDMARK_NAMES`, both :data:`HAND_SIDES`) as fixed
        averages of surface vertices, so a fit gets them from a few posed vertices (the body's
        cheap ``keypoints_and_vertices`` path) instead of a whole forward pass.

        A joint's landmark is an affine combination of the 12 rest-pose vertices nearest its head
        among those its own bone or its parent's dominates (a ring around the finger): the one
        nearest their inverse-distance weights that puts it exactly at the head in the rest pose.
        A fingertip's is the vertex of the last bone furthest along it.

        Returns:
            ``vertex_index`` [N] and ``weights`` [2, 21, N] (rows summing to 1), computed once.
        """
        cached = getattr(self, "_hand_regressor", None)
        if cached is not None:
            return cached
        with torch.no_grad():
            bind = self.bind_pose(self.default_shape())
            rest = bind.vertices.double()
            heads = bind.joints[:, :3, 3].double()
            bones = self.smplx_joint_bones()
            dominant = self.smplx_skinning_weights().argmax(1)
            columns: dict[int, int] = {}
            entries: list[tuple[int, int, int, float]] = []  # side, landmark, vertex, weight
            for s, side in enumerate(HAND_SIDES):
                for landmark in range(len(HAND_LANDMARK_NAMES)):
                    name = hand_landmark_joint(side, landmark)
                    if name is not None:
                        j = SMPLX_JOINT_NAMES.index(name)
                        owners = torch.tensor([j, SMPLX_PARENTS[j]], device=dominant.device)
                        candidates = torch.nonzero(torch.isin(dominant, owners))[:, 0].cpu()
                        dist = (rest[candidates] - heads[bones[j]]).norm(dim=1)
                        near = dist.argsort()[:12]
                        weight = 1.0 / dist[near].clamp(min=1e-4)
                        weight = _affine_through(rest[candidates[near]], heads[bones[j]], weight / weight.sum())
                        picked = [(int(candidates[n]), float(w)) for n, w in zip(near, weight)]
                    else:
                        last = SMPLX_JOINT_NAMES.index(hand_landmark_joint(side, landmark - 1))
                        mid = SMPLX_JOINT_NAMES.index(hand_landmark_joint(side, landmark - 2))
                        along = heads[bones[last]] - heads[bones[mid]]
                        candidates = torch.nonzero(dominant == last)[:, 0].cpu()
                        reach = (rest[candidates] - heads[bones[last]]) @ along
                        picked = [(int(candidates[reach.argmax()]), 1.0)]
                    entries += [(s, landmark, v, w) for v, w in picked]
                    for v, _ in picked:
                        columns.setdefault(v, len(columns))
            weights = torch.zeros(2, len(HAND_LANDMARK_NAMES), len(columns), dtype=rest.dtype)
            for s, landmark, v, w in entries:
                weights[s, landmark, columns[v]] += w
        vertex_index = torch.tensor(list(columns), device=self.device)
        self._hand_regressor = (vertex_index, weights.to(device=self.device, dtype=bind.vertices.dtype))
        return self._hand_regressor

    def hand_landmarks(self, vertices: Tensor) -> Tensor:
        """[B, 2, 21, 3] hand landmarks from [B, N, 3] posed vertices ``hand_regressor()[0]``."""
        _, weights = self.hand_regressor()
        return torch.einsum("shn,bnc->bshc", weights.to(vertices.dtype), vertices)

    @abc.abstractmethod
    def bind_pose(self, shape: Tensor) -> BindPose:
        """The rest pose of the body of [S] ``shape`` (see :class:`BindPose`)."""

    def uv_layout(self) -> tuple[Tensor, Tensor] | None:
        """The body's texture layout, when its assets have one: ``uv`` [U, 2] coordinates in [0, 1]
        (glTF orientation: v = 0 at the image's top row) and ``face_uv`` [F, 3], each face corner's
        row of ``uv``. None for a body without one."""
        return None

    @abc.abstractmethod
    def default_shape(self) -> Tensor:
        """[S] the mean shape."""

    @abc.abstractmethod
    def shape_from_latent(self, latent: Tensor) -> Tensor:
        """Map an unconstrained optimisation variable [B, S] to valid shape parameters [B, S]."""

    @abc.abstractmethod
    def latent_from_shape(self, shape: Tensor) -> Tensor:
        """Inverse of :meth:`shape_from_latent`."""

    @abc.abstractmethod
    def forward(self, shape: Tensor, pose: Tensor, transl: Tensor | None = None, expression: Tensor | None = None) -> BodyOutput:
        """Pose and shape the body.

        Args:
            shape: [B, S] shape parameters (``num_shape_params``).
            pose: [B, 55, 3] SMPL-X axis-angle pose; index 0 is the global orientation.
            transl: [B, 3] translation, zero when None.
            expression: [B, E] expression coefficients (``num_expression_coeffs``), neutral when
                None.
        """

    def keypoints_and_vertices(self, shape: Tensor, pose: Tensor, transl: Tensor | None, vertex_index: Tensor, expression: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[B, K, 3] keypoints and [B, N, 3] posed vertices ``vertex_index`` only.

        Equal to ``forward`` followed by indexing; backends override it with a cheaper path (the
        body fit calls it hundreds of times per photo).
        """
        out = self(shape, pose, transl, expression)
        return out.keypoints, out.vertices[:, vertex_index]

    @torch.no_grad()
    def check_health(self) -> None:
        """Raise if a forward pass of the mean shape in the T-pose fails (operators' health check)."""
        self(self.default_shape()[None], zero_pose(1, device=self.device))

    def check_inputs(self, shape: Tensor, pose: Tensor, transl: Tensor | None, expression: Tensor | None = None) -> None:
        if shape.ndim != 2 or shape.shape[1] != self.num_shape_params:
            raise ValueError(f"`shape` must be [B, {self.num_shape_params}] for {self.name}, got {tuple(shape.shape)}.")
        if pose.ndim != 3 or pose.shape[1:] != (NUM_POSE_JOINTS, 3):
            raise ValueError(f"`pose` must be [B, {NUM_POSE_JOINTS}, 3] (SMPL-X axis-angle), got {tuple(pose.shape)}.")
        if pose.shape[0] != shape.shape[0]:
            raise ValueError(f"`pose` and `shape` batch sizes differ: {pose.shape[0]} vs {shape.shape[0]}.")
        if transl is not None and tuple(transl.shape) != (shape.shape[0], 3):
            raise ValueError(f"`transl` must be [B, 3] = [{shape.shape[0]}, 3], got {tuple(transl.shape)}.")
        if expression is not None and tuple(expression.shape) != (shape.shape[0], self.num_expression_coeffs):
            raise ValueError(f"`expression` must be [B, {self.num_expression_coeffs}] = [{shape.shape[0]}, {self.num_expression_coeffs}] for {self.name}, got {tuple(expression.shape)}.")


def _affine_through(points: Tensor, target: Tensor, prior: Tensor) -> Tensor:
    """[N] weights summing to 1 with ``weights @ points == target`` ([N, 3] points), the nearest to
    ``prior`` (least squares; for points on one plane or line, the nearest such combination)."""
    a = torch.cat([points.T, torch.ones(1, len(points), dtype=points.dtype)])  # [4, N]
    b = torch.cat([target, torch.ones(1, dtype=points.dtype)])
    return prior + torch.linalg.pinv(a) @ (b - a @ prior)


def zero_pose(batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, 55, 3] the SMPL-X zero pose (T-pose)."""
    return torch.zeros(batch_size, NUM_POSE_JOINTS, 3, device=device, dtype=dtype)


class BodyOperator:
    """What every operator shares: its ``config``, the ``body`` model it runs on, the way an
    adapter builds it (:meth:`from_config`) and the health check adapters run before serving.
    Subclasses name their ``config_class``; those that load more (a detector, diffusion weights)
    or can build their own body extend :meth:`from_config`."""

    config_class: type

    def __init__(self, config, body: BodyModel) -> None:
        self.config = config
        self.body = body

    @classmethod
    def from_config(cls, config=None, *, body: BodyModel | None = None):
        """The operator for ``config`` (its defaults when None) on ``body`` (built once per actor or
        replica and shared by its stages)."""
        return cls(*cls._config_and_body(config, body))

    @classmethod
    def _config_and_body(cls, config, body: BodyModel | None) -> tuple:
        """``config`` (its defaults when None) and ``body``, which this operator's config cannot build."""
        if body is None:
            raise ValueError(f"{cls.__name__}.from_config needs `body`: its config does not say which body model to build.")
        return (cls.config_class() if config is None else config), body

    def check_health(self) -> None:
        """Raise if the operator cannot serve (a forward pass of its body must work)."""
        self.body.check_health()
