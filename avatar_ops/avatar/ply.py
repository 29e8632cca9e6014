"""``avatar.ply`` (the photo's pose) and ``avatar_canonical.ply`` (the T-pose).

Standard 3D Gaussian Splatting PLY (x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2
rot_0..3; logit opacity, log scales, rotation w x y z, degree-3 SH layout with zero rest
coefficients) in the canonical frame (y up, facing +z, metres).
"""

from __future__ import annotations

import numpy as np
import torch

from avatar_ops.avatar.animate import canonical_pose
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BodyModel

SH_C0 = 0.28209479177387814


def ply_bytes(avatar: GaussianAvatar, body: BodyModel, pose: str = "photo") -> bytes:
    """The avatar as a standard 3DGS binary PLY, in the photo's pose (``photo``) or the T-pose
    (``canonical``), upright in the canonical frame."""
    if pose not in ("photo", "canonical"):
        raise ValueError(f"`pose` must be 'photo' or 'canonical', got {pose!r}.")
    body_pose = canonical_pose(avatar).to(avatar.shape.device)
    if pose == "canonical":
        body_pose = torch.zeros_like(body_pose)
    with torch.no_grad():
        g = avatar.posed(body, body_pose)
    means = g["means"][0].cpu().numpy().astype(np.float32)
    quats = g["quats"][0].cpu().numpy().astype(np.float32)
    n = len(means)
    fields = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *(f"f_rest_{i}" for i in range(45))]
    fields += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    col = {f: i for i, f in enumerate(fields)}
    data = np.zeros((n, len(fields)), np.float32)
    data[:, 0:3] = means
    data[:, col["f_dc_0"] : col["f_dc_2"] + 1] = (avatar.color.detach().cpu().numpy() - 0.5) / SH_C0
    data[:, col["opacity"]] = avatar.opacity_logit.detach().cpu().numpy()
    data[:, col["scale_0"] : col["scale_2"] + 1] = avatar.log_scale.detach().cpu().numpy()
    data[:, col["rot_0"] : col["rot_3"] + 1] = quats
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n%send_header\n" % (n, "".join(f"property float {f}\n" for f in fields))
    return header.encode("ascii") + data.tobytes()
