"""``avatar.ply`` (the photo's pose, in the photo's camera) and ``avatar_canonical.ply`` (the
T-pose), as standard 3D Gaussian Splatting PLY files.

Frame: the 3DGS/COLMAP convention, OpenCV camera axes (x right, y down, z forward), metres.

* ``avatar.ply`` is the avatar where the photo saw it: the fitted pose, global orientation and
  translation, in the photo camera's frame. That camera sits at the origin with identity
  extrinsics and the avatar's ``source_K``, so it reproduces the fit's view of the photo.
* ``avatar_canonical.ply`` is the T-pose turned 180 degrees about x out of the body's canonical
  frame (y up, facing +z): ``(x, y, z) -> (x, -y, -z)``. That is the frame of a level camera
  standing in front of the avatar, the same turn the tracker starts every fit from, so the head is
  at -y, the feet at +y and the avatar faces -z. Each Gaussian's rotation turns with it.

Why this frame: the viewers assume it. SuperSplat (playcanvas/splat-transform
``src/lib/utils/math.ts``: ``Transform.PLY = fromEulers(0, 0, 180)``, applied to PLY, .splat,
KSplat, SPZ and SOG on load) turns every file 180 degrees about z into its y-up world;
GaussianSplats3D shows files as stored and its examples look at INRIA scenes with
``cameraUp: [0, -1, ...]``; antimatter15/splat and the INRIA viewer render with OpenCV cameras.

Fields, INRIA style: ``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2
rot_0 rot_1 rot_2 rot_3``, float32, little endian: logit opacity, log scales, unit quaternions
(w, x, y, z), ``f_dc`` the degree-0 spherical-harmonic coefficient ``(rgb - 0.5) / SH_C0``.

No ``f_rest_*``: an avatar's colour is one RGB per Gaussian (view-independent, degree 0), so there
are no higher-order coefficients to write (or to rotate with the frame), and 45 zero floats per
Gaussian were 73 % of the file. Readers take the SH degree from the number of ``f_rest_*`` fields,
none meaning degree 0: GaussianSplats3D (``src/loaders/ply/PlyParserUtils.js``,
``decodeSphericalHarmonicsFromSectionHeader``: degree 0 below 9 ``f_rest`` fields),
splat-transform / SuperSplat (``src/lib/readers/read-ply.ts``: ``restCount === 0`` -> 0 bands),
the INRIA trainer's ``GaussianModel.load_ply`` (asserts ``3 * (sh_degree + 1) ** 2 - 3`` of them,
so load with ``sh_degree=0``). The INRIA SIBR viewer reads each row as a fixed struct
(``RichPoint<D>``: pos, n[3], shs, opacity, scale, rot) with ``D`` from the model folder's
``cfg_args``: it needs ``sh_degree=0`` there, and it is why ``nx ny nz`` (zeros, as the INRIA
trainer writes them) stay in the file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BodyModel
from avatar_ops.body.rotations import matrix_to_quaternion, quaternion_to_matrix

SH_C0 = 0.28209479177387814
POSES = ("photo", "canonical")
PLY_FIELDS = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
    "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip

# The body's canonical frame (y up, facing +z) to OpenCV axes: 180 degrees about x.
CANONICAL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


@dataclasses.dataclass
class Splats:
    """Gaussians as 3DGS files store them (numpy float32, OpenCV axes, metres).

    Attributes:
        means: [N, 3] centres.
        quats: [N, 4] unit quaternions (w, x, y, z).
        log_scales: [N, 3] log standard deviations along the rotated axes.
        opacity_logits: [N] opacity before the sigmoid.
        sh_dc: [N, 3] degree-0 SH coefficients, ``(rgb - 0.5) / SH_C0``.
    """

    means: np.ndarray
    quats: np.ndarray
    log_scales: np.ndarray
    opacity_logits: np.ndarray
    sh_dc: np.ndarray

    def __len__(self) -> int:
        return int(self.means.shape[0])


def avatar_splats(avatar: GaussianAvatar, body: BodyModel, pose: str = "photo") -> Splats:
    """The avatar's Gaussians in the photo's pose and camera (``photo``) or in the T-pose turned
    into OpenCV axes (``canonical``); see the module docstring for both frames."""
    if pose not in POSES:
        raise ValueError(f"`pose` must be one of {POSES}, got {pose!r}.")
    with torch.no_grad():
        if pose == "photo":
            g = avatar.posed(body, avatar.source_pose[None], avatar.source_transl[None])
            means, quats = g["means"][0], g["quats"][0]
        else:
            g = avatar.posed(body, torch.zeros_like(avatar.source_pose)[None])
            flip = CANONICAL_TO_OPENCV.to(g["means"])
            means = g["means"][0] @ flip.T
            quats = matrix_to_quaternion(flip @ quaternion_to_matrix(g["quats"][0]))

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    return Splats(
        means=f32(means), quats=f32(quats), log_scales=f32(avatar.log_scale), opacity_logits=f32(avatar.opacity_logit),
        sh_dc=f32((avatar.color - 0.5) / SH_C0),
    )  # fmt: skip


def splats_to_ply(splats: Splats) -> bytes:
    """A binary little-endian 3DGS PLY of ``splats`` (fields :data:`PLY_FIELDS`)."""
    n = len(splats)
    data = np.zeros((n, len(PLY_FIELDS)), np.float32)
    col = {f: i for i, f in enumerate(PLY_FIELDS)}
    data[:, col["x"] : col["z"] + 1] = splats.means
    data[:, col["f_dc_0"] : col["f_dc_2"] + 1] = splats.sh_dc
    data[:, col["opacity"]] = splats.opacity_logits
    data[:, col["scale_0"] : col["scale_2"] + 1] = splats.log_scales
    data[:, col["rot_0"] : col["rot_3"] + 1] = splats.quats
    properties = "".join(f"property float {f}\n" for f in PLY_FIELDS)
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n{properties}end_header\n"
    return header.encode("ascii") + data.astype("<f4").tobytes()


def ply_bytes(avatar: GaussianAvatar, body: BodyModel, pose: str = "photo") -> bytes:
    """The avatar as a standard 3DGS binary PLY in the photo's pose and camera (``photo``) or the
    T-pose (``canonical``), both in OpenCV axes (y down)."""
    return splats_to_ply(avatar_splats(avatar, body, pose))
