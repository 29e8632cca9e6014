"""SMPL-X through the ``smplx`` package, from licensed model files at a path or fsspec URI."""

from __future__ import annotations

import contextlib
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES, SMPLX_PARENTS, BindPose, BodyModel, BodyOutput
from avatar_ops.body.rotations import axis_angle_to_matrix
from avatar_ops.io.storage import cache_locally

REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")

# Keypoints taken from joints (by SMPL-X joint name) or from surface vertices (by smplx's vertex-id table).
_KEYPOINT_SOURCES = {
    "nose": ("vertex", "nose"), "left_eye": ("vertex", "leye"), "right_eye": ("vertex", "reye"),
    "left_ear": ("vertex", "lear"), "right_ear": ("vertex", "rear"),
    "left_shoulder": ("joint", "left_shoulder"), "right_shoulder": ("joint", "right_shoulder"),
    "left_elbow": ("joint", "left_elbow"), "right_elbow": ("joint", "right_elbow"),
    "left_wrist": ("joint", "left_wrist"), "right_wrist": ("joint", "right_wrist"),
    "left_hip": ("joint", "left_hip"), "right_hip": ("joint", "right_hip"),
    "left_knee": ("joint", "left_knee"), "right_knee": ("joint", "right_knee"),
    "left_ankle": ("joint", "left_ankle"), "right_ankle": ("joint", "right_ankle"),
    "left_big_toe": ("vertex", "LBigToe"), "right_big_toe": ("vertex", "RBigToe"),
    "left_small_toe": ("vertex", "LSmallToe"), "right_small_toe": ("vertex", "RSmallToe"),
    "left_heel": ("vertex", "LHeel"), "right_heel": ("vertex", "RHeel"),
}  # fmt: skip


def resolve_smplx_file(model_path: str, gender: str = "neutral") -> Path:
    """Local path of the SMPL-X ``.npz`` for ``model_path`` (a file or a folder holding
    ``SMPLX_<GENDER>.npz``), downloading object-store URIs once into the node-local cache."""
    local = cache_locally(model_path)
    if local.is_dir():
        local = local / f"SMPLX_{gender.upper()}.npz"
    if not local.exists():
        raise FileNotFoundError(f"SMPL-X model file not found: {local} (from model_path={model_path!r}, gender={gender!r}).")
    if local.suffix != ".npz":
        raise ValueError(f"`model_path` must point to an SMPL-X .npz (pickled .pkl files are not loaded), got {local}.")
    return local


def validate_smplx_npz(path: Path) -> int:
    """Check an SMPL-X ``.npz`` without unpickling anything; return its vertex count."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise ValueError(f"SMPL-X file {path} lacks the arrays {missing}; it has {sorted(data.files)}.")
            for key in data.files:
                _ = data[key]  # raises on object (pickled) arrays
            num_vertices = int(data["v_template"].shape[0])
            num_joints = int(data["J_regressor"].shape[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"SMPL-X file {path} is not a readable .npz: {exc}") from exc
    if num_joints != len(SMPLX_JOINT_NAMES):
        raise ValueError(f"SMPL-X file {path} has {num_joints} joints, expected {len(SMPLX_JOINT_NAMES)}.")
    if num_vertices < 9930:
        raise ValueError(f"SMPL-X file {path} has {num_vertices} vertices; smplx's landmark table needs at least 9930.")
    return num_vertices


class SMPLXBody(BodyModel):
    """SMPL-X (``smplx.SMPLXLayer``, stateless: batch size from the inputs). Shape: betas."""

    name = "smplx"

    def __init__(self, layer) -> None:
        super().__init__()
        from smplx.vertex_ids import vertex_ids

        self.layer = layer
        self.joint_names = list(SMPLX_JOINT_NAMES)
        self.num_shape_params = int(layer.num_betas)
        self.register_buffer("_faces", layer.faces_tensor.long(), persistent=False)
        self.register_buffer("_skinning_weights", layer.lbs_weights, persistent=False)
        ids = vertex_ids["smplx"]
        kinds = [_KEYPOINT_SOURCES[n][0] for n in KEYPOINT_NAMES]
        index = [SMPLX_JOINT_NAMES.index(src) if kind == "joint" else ids[src] for kind, src in (_KEYPOINT_SOURCES[n] for n in KEYPOINT_NAMES)]
        self.register_buffer("kp_is_vertex", torch.tensor([k == "vertex" for k in kinds]), persistent=False)
        self.register_buffer("kp_index", torch.tensor(index), persistent=False)

    @classmethod
    def from_file(cls, model_path: str, gender: str = "neutral", num_betas: int = 10, device: str | torch.device = "cpu") -> SMPLXBody:
        """Load SMPL-X from a ``.npz`` file or folder at a path or fsspec URI."""
        import smplx

        path = resolve_smplx_file(model_path, gender)
        validate_smplx_npz(path)
        printed = io.StringIO()  # smplx prints its warnings (fewer shape or expression columns) to stdout
        with contextlib.redirect_stdout(printed):
            layer = smplx.SMPLXLayer(model_path=str(path), ext="npz", num_betas=num_betas, use_pca=False, flat_hand_mean=True, gender=gender)
        for line in printed.getvalue().splitlines():
            logging.getLogger(__name__).warning("smplx (%s): %s", path.name, line.strip())
        return cls(layer).to(device)

    @torch.no_grad()
    def bind_pose(self, shape: Tensor) -> BindPose:
        """The shaped template (a T-pose) and its regressed joints, each frame unrotated."""
        from smplx.lbs import blend_shapes, vertices2joints

        rest = self.layer.v_template[None] + blend_shapes(shape[None].to(self.layer.v_template.dtype), self.layer.shapedirs)
        heads = vertices2joints(self.layer.J_regressor, rest)[0]
        frames = torch.eye(4, dtype=rest.dtype, device=rest.device).repeat(len(SMPLX_JOINT_NAMES), 1, 1)
        frames[:, :3, 3] = heads
        return BindPose(vertices=rest[0], joints=frames, parents=list(SMPLX_PARENTS))

    def default_shape(self) -> Tensor:
        return torch.zeros(self.num_shape_params, dtype=self._skinning_weights.dtype, device=self.device)

    def shape_from_latent(self, latent: Tensor) -> Tensor:
        return latent

    def latent_from_shape(self, shape: Tensor) -> Tensor:
        return shape

    @property
    def num_expression_coeffs(self) -> int:
        return int(self.layer.num_expression_coeffs)

    def forward(self, shape: Tensor, pose: Tensor, transl: Tensor | None = None, expression: Tensor | None = None) -> BodyOutput:
        self.check_inputs(shape, pose, transl, expression)
        batch = pose.shape[0]
        rot = axis_angle_to_matrix(pose)  # [B, 55, 3, 3]
        t = torch.zeros_like(pose[:, 0]) if transl is None else transl
        out = self.layer(
            betas=shape, global_orient=rot[:, 0:1], body_pose=rot[:, 1:22], jaw_pose=rot[:, 22:23],
            leye_pose=rot[:, 23:24], reye_pose=rot[:, 24:25], left_hand_pose=rot[:, 25:40],
            right_hand_pose=rot[:, 40:55], transl=t,
            expression=torch.zeros(batch, self.num_expression_coeffs, dtype=pose.dtype, device=pose.device) if expression is None else expression,
        )  # fmt: skip
        vertices, joints = out.vertices, out.joints[:, : len(SMPLX_JOINT_NAMES)]
        keypoints = torch.where(self.kp_is_vertex[None, :, None], vertices[:, self.kp_index.clamp(max=vertices.shape[1] - 1)], joints[:, self.kp_index.clamp(max=joints.shape[1] - 1)])
        transforms, rest_vertices = self._transforms(shape, rot, t)
        return BodyOutput(vertices=vertices, joints=joints, keypoints=keypoints, joint_transforms=transforms, rest_vertices=rest_vertices)

    def _transforms(self, shape: Tensor, rot: Tensor, transl: Tensor) -> tuple[Tensor, Tensor]:
        """Rest-to-posed joint transforms as smplx's ``lbs`` computes them, plus the shaped rest mesh."""
        from smplx.lbs import batch_rigid_transform, blend_shapes, vertices2joints

        rest = self.layer.v_template[None] + blend_shapes(shape, self.layer.shapedirs)
        joints_rest = vertices2joints(self.layer.J_regressor, rest)
        _, transforms = batch_rigid_transform(rot, joints_rest, self.layer.parents)
        transforms = transforms.clone()
        transforms[..., :3, 3] += transl[:, None]
        return transforms, rest
