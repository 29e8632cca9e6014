"""Anny (NAVER, Apache-2.0, CC0 MakeHuman assets) behind the :class:`BodyModel` interface.

Anny is Z-up, faces -Y and rests in an A-pose; SMPL-X is Y-up, faces +Z and rests in a T-pose.
Each Anny bone is driven by one SMPL-X joint. With ``A_c`` the rotation that takes Anny bone ``c``
from its A-pose rest to the T-pose, the SMPL-X global rotation ``G`` of a joint maps to the Anny
global rotation ``G A_c``, so the local (world-aligned, Anny's ``local-ref``) delta of bone ``c``
under parent ``p`` is ``A_p^T r A_c`` with ``r`` the SMPL-X local rotation of the joint that starts
at ``c`` (identity for twist bones that continue their parent's segment).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES, SMPLX_PARENTS, BindPose, BodyModel, BodyOutput
from avatar_ops.body.rotations import axis_angle_to_matrix, rotation_between

# Anny frame -> SMPL-X frame: (x, y, z) -> (x, z, -y).
ANNY_TO_SMPLX = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

_FINGERS = {"1": "thumb", "2": "index", "3": "middle", "4": "ring", "5": "pinky"}
_SIDES = {"L": "left", "R": "right"}


def _smplx_joint_of(bone: str) -> str:
    """The SMPL-X joint whose rotation drives an Anny bone."""
    name, _, side_key = bone.partition(".")
    side = _SIDES.get(side_key, "")
    fixed = {
        "root": "pelvis", "pelvis": "pelvis", "spine05": "spine1", "spine04": "spine1",
        "spine03": "spine2", "spine02": "spine3", "spine01": "spine3", "neck01": "neck",
        "neck02": "neck", "neck03": "neck", "head": "head",
    }  # fmt: skip
    if name in fixed:
        return fixed[name]
    per_side = {
        "upperleg01": "hip", "upperleg02": "hip", "lowerleg01": "knee", "lowerleg02": "knee",
        "foot": "ankle", "clavicle": "collar", "shoulder01": "collar", "upperarm01": "shoulder",
        "upperarm02": "shoulder", "lowerarm01": "elbow", "lowerarm02": "elbow", "wrist": "wrist",
        "eye": "eye",
    }  # fmt: skip
    if name in per_side:
        return f"{side}_{per_side[name]}"
    if name.startswith("toe"):
        return f"{side}_foot"
    if name.startswith("metacarpal"):
        return f"{side}_wrist"
    if name.startswith("finger"):
        finger, segment = name[len("finger") :].split("-")
        return f"{side}_{_FINGERS[finger]}{segment}"
    raise ValueError(f"Anny bone {bone!r} has no SMPL-X counterpart.")


def build_anny(cache_dir: str | None = None, device: str | torch.device = "cpu"):
    """Build (or load from ``ANNY_CACHE_DIR``) the default Anny model in float32."""
    if cache_dir is not None:
        os.environ.setdefault("ANNY_CACHE_DIR", str(cache_dir))
    import warp

    warp.config.log_level = warp.LOG_WARNING  # warp prints its start-up banner on stdout, where commands print JSON
    import anny  # deferred: importing anny initialises warp

    model = anny.Anny().float().to(device)
    regressor = anny.KeypointsRegressor.coco(model).to(device)
    if tuple(regressor.labels) != KEYPOINT_NAMES:
        raise RuntimeError(f"Anny's COCO keypoints changed order: {regressor.labels}")
    return model, regressor


class AnnyBody(BodyModel):
    """Anny driven by SMPL-X poses. Shape: Anny's 6 phenotypes in [0, 1]."""

    name = "anny"

    def __init__(self, model, keypoint_regressor) -> None:
        super().__init__()
        self.model = model
        self.keypoint_regressor = keypoint_regressor
        self.joint_names = list(model.bone_labels)
        self.shape_names = list(model.phenotype_labels)
        self.num_shape_params = len(self.shape_names)
        dtype = model.template_vertices.dtype
        device = model.template_vertices.device
        self.register_buffer("_faces", model.get_triangular_faces().long().to(device), persistent=False)
        weights = torch.zeros(model.template_vertices.shape[0], len(self.joint_names), dtype=dtype, device=device)
        weights.scatter_add_(1, model.vertex_bone_indices.long(), model.vertex_bone_weights.to(dtype))
        self.register_buffer("_skinning_weights", weights, persistent=False)
        self.register_buffer("m", ANNY_TO_SMPLX.to(device=device, dtype=dtype), persistent=False)

        bone_to_joint = [SMPLX_JOINT_NAMES.index(_smplx_joint_of(b)) for b in self.joint_names]
        parents = list(model.bone_parents)
        drives = []
        for c, j in enumerate(bone_to_joint):
            jp = bone_to_joint[parents[c]] if c > 0 else -1
            if c > 0 and j != jp and SMPLX_PARENTS[j] != jp:
                raise RuntimeError(f"Anny bone {self.joint_names[c]} skips SMPL-X joints between {jp} and {j}.")
            drives.append(c > 0 and j != jp)
        self.register_buffer("bone_to_joint", torch.tensor(bone_to_joint, device=device), persistent=False)
        self.register_buffer("bone_drives", torch.tensor(drives, device=device), persistent=False)
        self.register_buffer("bone_parents", torch.tensor([max(p, 0) for p in parents], device=device), persistent=False)
        self.register_buffer("rest_correction", self._rest_corrections(), persistent=False)
        self._precompute_keypoint_basis()

    @torch.no_grad()
    def _precompute_keypoint_basis(self) -> None:
        """Keypoints are fixed vertex averages and skinning is linear, so a keypoint is
        ``sum_j T_j [Q_kj; s_kj]`` with ``Q_kj = sum_v r_kv w_vj rest_v``, itself linear in the
        blendshape coefficients: ``Q = Q0 + sum_a c_a Qa``. Precomputing Q0, Qa and s makes
        keypoints cost a few small products instead of skinning all vertices."""
        m, r = self.model, self.keypoint_regressor
        weights = self._skinning_weights
        q0, qa, s = [], [], []
        for k in range(r.regression_weights.shape[0]):
            index = r.regression_indices[k]
            rk = r.regression_weights[k]
            support = rk != 0
            index, rk = index[support], rk[support]
            rw = rk[:, None] * weights[index]  # [n, J]
            s.append(rw.sum(0))
            q0.append(rw.T @ m.template_vertices[index])  # [J, 3]
            qa.append(torch.einsum("nj,anc->ajc", rw, m.blendshapes[:, index]))  # [A, J, 3]
        self.register_buffer("_kp_q0", torch.stack(q0), persistent=False)  # [K, J, 3]
        self.register_buffer("_kp_qa", torch.stack(qa, 1), persistent=False)  # [A, K, J, 3]
        self.register_buffer("_kp_s", torch.stack(s), persistent=False)  # [K, J]

    @torch.no_grad()
    def _rest_corrections(self) -> Tensor:
        """[J, 3, 3] rotations taking each Anny bone from the A-pose rest to the SMPL-X T-pose."""
        identity = torch.eye(4, dtype=self.m.dtype, device=self.m.device).expand(1, len(self.joint_names), 4, 4)
        out = self.model(identity, self.default_shape()[None])
        heads = out["bone_poses"][0, :, :3, 3] @ self.m.T
        names = self.joint_names
        corr = torch.eye(3, dtype=self.m.dtype, device=self.m.device).repeat(len(names), 1, 1)
        for side, sign in (("L", 1.0), ("R", -1.0)):
            lateral = torch.tensor([sign, 0.0, 0.0], dtype=self.m.dtype, device=self.m.device)
            for start, end in (("upperarm01", "lowerarm01"), ("lowerarm01", "wrist")):
                i, k = names.index(f"{start}.{side}"), names.index(f"{end}.{side}")
                corr[i] = rotation_between(heads[k] - heads[i], lateral)
        # Bones below a corrected arm bone inherit its correction (twist bones, hand, fingers);
        # bones are stored parents first.
        explicit = {"upperarm01", "lowerarm01"}
        identity = torch.eye(3, dtype=corr.dtype, device=corr.device)
        for c in range(1, len(names)):
            parent = self.model.bone_parents[c]
            if names[c].split(".")[0] not in explicit and not torch.equal(corr[parent], identity):
                corr[c] = corr[parent]
        return corr

    def smplx_joint_bones(self) -> list[int]:
        """Each SMPL-X joint's first Anny bone (bones are stored parents first), -1 where no bone
        starts at it (the jaw: Anny's head is one bone)."""
        bones = [-1] * len(SMPLX_JOINT_NAMES)
        for c, j in enumerate(self.bone_to_joint.tolist()):
            if bones[j] < 0 and (c == 0 or bool(self.bone_drives[c])):
                bones[j] = c
        return bones

    def smplx_skinning_weights(self) -> Tensor:
        weights = torch.zeros(self.num_vertices, len(SMPLX_JOINT_NAMES), dtype=self._skinning_weights.dtype, device=self.device)
        return weights.index_add_(1, self.bone_to_joint, self._skinning_weights)

    @torch.no_grad()
    def bind_pose(self, shape: Tensor) -> BindPose:
        """Anny's own rest pose (an A-pose) and bone frames, turned into the SMPL-X frame."""
        identity = torch.eye(4, dtype=self.m.dtype, device=self.m.device).expand(1, len(self.joint_names), 4, 4)
        out = self.model(identity, shape[None].to(self.m.dtype))
        to_smplx = torch.eye(4, dtype=self.m.dtype, device=self.m.device)
        to_smplx[:3, :3] = self.m
        parents = [int(p) for p in self.model.bone_parents]
        return BindPose(vertices=out["rest_vertices"][0] @ self.m.T, joints=to_smplx @ out["rest_bone_poses"][0], parents=[-1] + parents[1:])

    def uv_layout(self) -> tuple[Tensor, Tensor]:
        """MakeHuman's texture layout, shipped in Anny's assets (OBJ orientation, v up, flipped here)."""
        uv = self.model.texture_coordinates.to(self.m.dtype).clone()
        uv[:, 1] = 1.0 - uv[:, 1]
        return uv, self.model.face_texture_coordinate_indices.long()

    def default_shape(self) -> Tensor:
        return torch.full((self.num_shape_params,), 0.5, dtype=self.m.dtype, device=self.m.device)

    def shape_from_latent(self, latent: Tensor) -> Tensor:
        return 0.5 + 0.5 * torch.tanh(latent)

    def latent_from_shape(self, shape: Tensor) -> Tensor:
        return torch.atanh((2 * shape - 1).clamp(-0.999, 0.999))

    def local_deltas(self, pose: Tensor) -> Tensor:
        """[B, 55, 3] SMPL-X pose -> [B, J, 4, 4] Anny ``local-ref`` deltas (global orient excluded)."""
        batch = pose.shape[0]
        rot = axis_angle_to_matrix(pose)  # [B, 55, 3, 3]
        rel = rot[:, self.bone_to_joint]  # [B, J, 3, 3]
        eye = torch.eye(3, dtype=pose.dtype, device=pose.device)
        rel = torch.where(self.bone_drives[None, :, None, None], rel, eye)
        a_c = self.rest_correction
        a_p = self.rest_correction[self.bone_parents]
        delta = a_p.transpose(-1, -2) @ rel @ a_c
        delta[:, 0] = eye  # the root: the global orientation is applied in the SMPL-X frame
        delta = self.m.T @ delta @ self.m  # into Anny's axes
        out = torch.zeros(batch, delta.shape[1], 4, 4, dtype=pose.dtype, device=pose.device)
        out[..., :3, :3] = delta
        out[..., 3, 3] = 1
        return out

    def forward(self, shape: Tensor, pose: Tensor, transl: Tensor | None = None, expression: Tensor | None = None) -> BodyOutput:
        self.check_inputs(shape, pose, transl, expression)  # Anny has no expressions: [B, 0] or None
        out = self.model(self.local_deltas(pose), shape)
        global_rot = axis_angle_to_matrix(pose[:, 0])  # [B, 3, 3]
        to_world = global_rot @ self.m  # [B, 3, 3] Anny axes -> posed SMPL-X frame
        t = torch.zeros_like(pose[:, 0]) if transl is None else transl
        vertices = out["vertices"] @ to_world.transpose(1, 2) + t[:, None]
        joints = out["bone_poses"][..., :3, 3] @ to_world.transpose(1, 2) + t[:, None]
        keypoints = self.keypoint_regressor({"vertices": vertices})
        # T_world = [G M | t] T_anny [M^T | 0]
        transforms = out["bone_poses"] @ torch.linalg.inv(out["rest_bone_poses"])
        lin = to_world[:, None] @ transforms[..., :3, :3] @ self.m.T
        trans = (to_world[:, None] @ transforms[..., :3, 3:])[..., 0] + t[:, None]
        joint_transforms = torch.zeros_like(transforms)
        joint_transforms[..., :3, :3] = lin
        joint_transforms[..., :3, 3] = trans
        joint_transforms[..., 3, 3] = 1
        rest = out["rest_vertices"].expand(pose.shape[0], -1, -1) @ self.m.T
        return BodyOutput(vertices=vertices, joints=joints, keypoints=keypoints, joint_transforms=joint_transforms, rest_vertices=rest)

    def _blendshape_coefficients(self, shape: Tensor) -> Tensor:
        _, phenotype, local, facial = self.model.get_tensor_inputs(None, shape, None, None)
        return self.model._get_phenotype_blendshape_coefficients(phenotype, local, facial)

    def _rest_bone_poses(self, coeffs: Tensor) -> Tensor:
        """Anny's rest bone poses without its rest vertices (same as ``get_rest_model``)."""
        m = self.model
        if m.bone_orientation != "cached":
            return m.get_rest_model(coeffs)["rest_bone_poses"]
        import roma
        from anny.skinning.skinning import apply_linear_blendshape

        heads = apply_linear_blendshape(m.template_bone_heads, m.bone_heads_blendshapes, coeffs)
        cross = m.bone_template_orientation_matrices[None] + torch.einsum("ba,akij->bkij", coeffs, m.bone_orientation_blendshapes)
        orientation = roma.special_procrustes(cross)
        if m.rest_orientation_refiner is not None:
            orientation = m.rest_orientation_refiner(orientation, heads)
        poses = roma.Rigid(linear=orientation, translation=heads).to_homogeneous()
        if m.root_identity_orientation:
            poses = poses.clone()
            poses[:, 0, :3, :3] = torch.eye(3, device=poses.device, dtype=poses.dtype)
        return poses

    def keypoints_and_vertices(self, shape: Tensor, pose: Tensor, transl: Tensor | None, vertex_index: Tensor, expression: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_inputs(shape, pose, transl, expression)
        from anny.skinning.skinning import apply_linear_blendshape

        m = self.model
        coeffs = self._blendshape_coefficients(shape)
        transforms, _ = m.get_bone_transforms(self.local_deltas(pose), self._rest_bone_poses(coeffs))  # [B, J, 4, 4]
        global_rot = axis_angle_to_matrix(pose[:, 0])
        to_world = global_rot @ self.m
        t = torch.zeros_like(pose[:, 0]) if transl is None else transl
        # Keypoints from the precomputed basis.
        q = self._kp_q0 + torch.einsum("ba,akjc->bkjc", coeffs, self._kp_qa)
        kp = torch.einsum("bjxy,bkjy->bkx", transforms[..., :3, :3], q) + torch.einsum("bjx,kj->bkx", transforms[..., :3, 3], self._kp_s)
        keypoints = kp @ to_world.transpose(1, 2) + t[:, None]
        # The requested vertices, skinned alone.
        rest = apply_linear_blendshape(m.template_vertices[vertex_index], m.blendshapes[:, vertex_index], coeffs)
        batch, joints = transforms.shape[:2]
        per_vertex = (self._skinning_weights[vertex_index] @ transforms[..., :3, :].reshape(batch, joints, 12)).view(batch, -1, 3, 4)
        posed = (per_vertex[..., :3] @ rest[..., None])[..., 0] + per_vertex[..., 3]
        vertices = posed @ to_world.transpose(1, 2) + t[:, None]
        return keypoints, vertices
