"""The splat files users open in other viewers: ``avatar.ply`` / ``avatar_canonical.ply`` in the
3DGS/COLMAP convention (OpenCV axes: y down, z forward), no ``f_rest`` padding, and
``avatar_canonical.splat`` matching the PLY, on a tiny avatar built directly on each body."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from plyfile import PlyData

from avatar_ops.avatar.export import export_avatar
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.avatar.ply import CANONICAL_TO_OPENCV, PLY_FIELDS, SH_C0, avatar_splats, ply_bytes, splats_to_ply
from avatar_ops.avatar.reconstruct import sample_surface
from avatar_ops.avatar.splat import read_splat, splat_bytes
from avatar_ops.body.parts import Part, body_parts
from avatar_ops.body.rotations import quaternion_to_matrix
from avatar_ops.render.camera import intrinsics_for

WIDTH, HEIGHT = 192, 256


def tiny_avatar(body, n: int = 600) -> GaussianAvatar:
    """Random Gaussians on ``body``, seen by an upright camera 3 m in front of it."""
    torch.manual_seed(0)
    shape = body.default_shape()
    zero = torch.zeros(1, 55, 3)
    rest = body(shape[None], zero).vertices[0]
    face, bary = sample_surface(rest, body.faces, n, seed=0)
    rotation = torch.randn(n, 4)
    pose = torch.zeros(55, 3)
    pose[0] = torch.tensor([math.pi, 0.0, 0.0])  # the tracker's start: y-up body into the camera's y-down frame
    return GaussianAvatar(
        body_model=body.name, shape=shape, face=face, bary=bary, offset=0.01 * torch.rand(n),
        rotation=rotation / rotation.norm(dim=1, keepdim=True), log_scale=torch.empty(n, 3).uniform_(-5.0, -3.0),
        opacity_logit=torch.randn(n), color=torch.rand(n, 3), source_pose=pose,
        source_transl=torch.tensor([0.0, 0.2, 3.0]), source_K=torch.from_numpy(intrinsics_for(WIDTH, HEIGHT, 1.2)),
        width=WIDTH, height=HEIGHT,
    )  # fmt: skip


@pytest.fixture(scope="module", params=["anny", "smplx"])
def body(request):
    return request.getfixturevalue(f"{request.param}_body")


@pytest.fixture(scope="module")
def avatar(body):
    return tiny_avatar(body)


@pytest.fixture(scope="module")
def parts(body, avatar):
    """[N] each Gaussian's body part and side (+1 the subject's left)."""
    labels = body_parts(body).of_faces(body.faces)
    return labels.part[avatar.face].numpy(), labels.side[avatar.face].numpy()


def read_ply(data: bytes):
    return PlyData.read(io.BytesIO(data))["vertex"]


def xyz(vertex) -> np.ndarray:
    return np.stack([vertex["x"], vertex["y"], vertex["z"]], 1)


def test_canonical_ply_is_upright_in_opencv_axes(body, avatar, parts):
    part, side = parts
    means = xyz(read_ply(ply_bytes(avatar, body, "canonical")))
    y = means[:, 1]
    head, torso, foot = (y[part == p].mean() for p in (Part.HEAD, Part.TORSO, Part.FOOT))
    assert head < torso < foot, (head, torso, foot)  # head at -y, feet at +y
    assert part[y.argmin()] == Part.HEAD and part[y.argmax()] == Part.FOOT, (Part(part[y.argmin()]), Part(part[y.argmax()]))
    assert means[side == 1, 0].mean() > 0.2 > -0.2 > means[side == -1, 0].mean()  # a turn, not a mirror: the subject's left stays at +x
    # It faces -z, towards a viewer at -z looking down +z: the nose is nearer that viewer than the head's Gaussians.
    nose = body(avatar.shape[None], torch.zeros(1, 55, 3)).keypoints[0, 0] @ CANONICAL_TO_OPENCV.T
    assert float(nose[2]) < means[part == Part.HEAD, 2].mean() - 0.03
    # Exactly the T-pose turned 180 degrees about x, positions and each Gaussian's rotation.
    with torch.no_grad():
        t_pose = avatar.posed(body, torch.zeros(1, 55, 3))
    flip = CANONICAL_TO_OPENCV
    np.testing.assert_allclose(means, (t_pose["means"][0] @ flip.T).numpy(), atol=1e-6)
    splats = avatar_splats(avatar, body, "canonical")
    turned = quaternion_to_matrix(torch.from_numpy(splats.quats))
    torch.testing.assert_close(turned, flip @ quaternion_to_matrix(t_pose["quats"][0]), atol=1e-5, rtol=0)


def test_photo_ply_is_the_avatar_in_the_photo_camera(body, avatar, parts):
    part, _ = parts
    means = xyz(read_ply(ply_bytes(avatar, body, "photo")))
    with torch.no_grad():
        seen = avatar.posed(body, avatar.source_pose[None], avatar.source_transl[None])["means"][0].numpy()
    np.testing.assert_allclose(means, seen, atol=1e-6)  # what the fit rendered through the photo's camera
    assert (means[:, 2] > 0).all()  # in front of the camera at the origin
    k = avatar.source_K.numpy()
    u, v = (k[:2, :2] @ (means[:, :2] / means[:, 2:]).T + k[:2, 2:]).mean(1)
    assert 0 < u < WIDTH and 0 < v < HEIGHT, (u, v)
    assert means[part == Part.HEAD, 1].mean() < means[part == Part.FOOT, 1].mean()  # upright photo: head at -y


def test_ply_has_inria_fields_and_no_f_rest(body, avatar):
    data = ply_bytes(avatar, body, "canonical")
    vertex = read_ply(data)
    assert vertex.data.dtype.names == PLY_FIELDS
    assert not any(name.startswith("f_rest_") for name in vertex.data.dtype.names)  # DC colour only
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in PLY_FIELDS)
    assert vertex.count == len(avatar)
    assert len(data) == data.index(b"end_header\n") + len(b"end_header\n") + len(avatar) * len(PLY_FIELDS) * 4
    rot = np.stack([vertex[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vertex["opacity"], avatar.opacity_logit.numpy(), rtol=1e-6)
    scales = np.stack([vertex[f"scale_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(scales, avatar.log_scale.numpy(), rtol=1e-6)
    rgb = 0.5 + SH_C0 * np.stack([vertex[f"f_dc_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(rgb, avatar.color.numpy(), atol=1e-6)
    assert not np.any([vertex[n] for n in ("nx", "ny", "nz")])  # zeros, as the INRIA trainer writes them
    with pytest.raises(ValueError, match="`pose` must be one of"):
        ply_bytes(avatar, body, "t-pose")


def test_splat_file_matches_the_canonical_ply(body, avatar, parts):
    part, _ = parts
    splats = avatar_splats(avatar, body, "canonical")
    data = splat_bytes(splats)
    assert len(data) == 32 * len(avatar)
    got = read_splat(data)
    vertex = read_ply(splats_to_ply(splats))
    assert len(got) == vertex.count == len(avatar)
    # Each record is one PLY row: find it by its position (float32, bit for bit).
    row = {p.tobytes(): i for i, p in enumerate(xyz(vertex))}
    index = np.array([row[p.tobytes()] for p in got.positions])
    assert sorted(index) == list(range(len(avatar)))
    ply_scale = np.stack([vertex[f"scale_{i}"] for i in range(3)], 1)[index]
    np.testing.assert_allclose(got.scales, np.exp(ply_scale), rtol=1e-6)
    rgb = 0.5 + SH_C0 * np.stack([vertex[f"f_dc_{i}"] for i in range(3)], 1)[index]
    alpha = 1 / (1 + np.exp(-vertex["opacity"][index]))
    assert np.abs(got.rgba / 255 - np.concatenate([rgb, alpha[:, None]], 1)).max() <= 1 / 255
    ply_rot = np.stack([vertex[f"rot_{i}"] for i in range(4)], 1)[index]
    assert np.abs((got.quats * ply_rot).sum(1)).min() > 0.99  # same rotation up to the quaternion's sign
    importance = np.exp(ply_scale.sum(1)) * alpha
    assert (np.diff(importance) <= 0).all()  # biggest, most opaque first, as antimatter15's convert.py orders them
    y = got.positions[:, 1]
    head, foot = (part[index] == p for p in (Part.HEAD, Part.FOOT))
    assert y[head].mean() < y[foot].mean()  # same convention as the PLY: head at -y
    with pytest.raises(ValueError, match=r"`data` must be a whole number of 32-byte \.splat records, got 33 bytes"):
        read_splat(data[:33])


def test_export_writes_the_splat_beside_the_plys(smplx_body, tmp_path):
    avatar = tiny_avatar(smplx_body, n=200)
    files = export_avatar(avatar, smplx_body, str(tmp_path), turntable_views=1, preview_size=16, animation_frames=1)
    assert {"avatar.ply", "avatar_canonical.ply", "avatar_canonical.splat"} <= set(files)
    canonical = avatar_splats(avatar, smplx_body, "canonical")
    assert (tmp_path / "avatar_canonical.splat").read_bytes() == splat_bytes(canonical)
    assert (tmp_path / "avatar_canonical.ply").read_bytes() == splats_to_ply(canonical)
    assert (tmp_path / "avatar.ply").read_bytes() == ply_bytes(avatar, smplx_body, "photo")
