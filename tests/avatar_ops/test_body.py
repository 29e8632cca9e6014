"""Body models: one interface, SMPL-X poses drive both Anny and SMPL-X the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_ops.body import BodyModelConfig, build_body_model, zero_pose
from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES

KP = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
J = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}


@pytest.fixture(params=["anny", "smplx"])
def body(request):
    return request.getfixturevalue(f"{request.param}_body")


@pytest.mark.parametrize("batch", [1, 3])
def test_forward_shapes(body, batch):
    shape = body.default_shape()[None].repeat(batch, 1)
    out = body(shape, zero_pose(batch), torch.zeros(batch, 3))
    v, j = body.num_vertices, len(body.joint_names)
    assert out.vertices.shape == (batch, v, 3)
    assert out.rest_vertices.shape == (batch, v, 3)
    assert out.joints.shape == (batch, j, 3)
    assert out.keypoints.shape == (batch, len(KEYPOINT_NAMES), 3)
    assert out.joint_transforms.shape == (batch, j, 4, 4)
    assert body.faces.shape[1] == 3 and int(body.faces.max()) < v
    assert body.skinning_weights.shape == (v, j)
    torch.testing.assert_close(body.skinning_weights.sum(1), torch.ones(v), atol=1e-4, rtol=0)


def test_zero_pose_is_t_pose(body):
    out = body(body.default_shape()[None], zero_pose(1))
    k = out.keypoints[0]
    for side, sign in (("left", 1), ("right", -1)):
        shoulder, wrist = k[KP[f"{side}_shoulder"]], k[KP[f"{side}_wrist"]]
        assert sign * (wrist[0] - shoulder[0]) > 0.35  # arm out sideways, subject's left at +x
        assert abs(float(wrist[1] - shoulder[1])) < 0.06  # horizontal
    assert k[KP["nose"], 2] > k[KP["left_ear"], 2]  # facing +z
    assert k[KP["nose"], 1] > k[KP["left_hip"], 1]  # y up


def _limb_directions(body, pose: torch.Tensor) -> torch.Tensor:
    out = body(body.default_shape()[None], pose[None])
    k = out.keypoints[0]
    pairs = [("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("left_shoulder", "left_elbow"),
             ("left_knee", "left_ankle"), ("right_hip", "right_knee")]  # fmt: skip
    d = torch.stack([k[KP[b]] - k[KP[a]] for a, b in pairs])
    return d / d.norm(dim=1, keepdim=True)


def test_same_smplx_pose_drives_both_bodies_alike(anny_body, smplx_body):
    pose = zero_pose(1)[0]
    pose[J["left_elbow"]] = torch.tensor([0.0, -1.2, 0.0])  # flex forward
    pose[J["right_elbow"]] = torch.tensor([0.0, 0.9, 0.0])
    pose[J["left_shoulder"]] = torch.tensor([0.0, 0.0, -0.8])  # lower the arm
    pose[J["left_knee"]] = torch.tensor([1.3, 0.0, 0.0])  # bend back
    pose[J["right_hip"]] = torch.tensor([-0.7, 0.0, 0.0])  # leg forward
    a, s = _limb_directions(anny_body, pose), _limb_directions(smplx_body, pose)
    cos = (a * s).sum(1)
    assert (cos > 0.9).all(), cos
    # and the pose did something
    rest = _limb_directions(anny_body, zero_pose(1)[0])
    assert ((a * rest).sum(1) < 0.85).all()


def test_linear_blend_skinning_reproduces_vertices(body):
    pose = 0.3 * torch.randn(2, 55, 3, generator=torch.Generator().manual_seed(0))
    out = body(body.default_shape()[None].repeat(2, 1), pose, torch.tensor([[0.1, 0.2, 3.0], [0.0, 0.0, 2.0]]))
    rest = torch.cat([out.rest_vertices, torch.ones_like(out.rest_vertices[..., :1])], -1)
    skinned = torch.einsum("vj,bjxy,bvy->bvx", body.skinning_weights, out.joint_transforms, rest)[..., :3]
    torch.testing.assert_close(skinned, out.vertices, atol=1e-4, rtol=0)


def test_gradients_flow_to_pose_and_shape(body):
    pose = zero_pose(2).requires_grad_(True)
    shape = body.default_shape()[None].repeat(2, 1).requires_grad_(True)
    body(shape, pose).keypoints.sum().backward()
    assert pose.grad.abs().sum() > 0 and shape.grad.abs().sum() > 0


def test_bad_inputs_name_the_argument(anny_body):
    with pytest.raises(ValueError, match="`pose`"):
        anny_body(anny_body.default_shape()[None], torch.zeros(1, 24, 3))
    with pytest.raises(ValueError, match="`shape`"):
        anny_body(torch.zeros(1, 3), zero_pose(1))


def test_smplx_loading_errors(tmp_path, smplx_file):
    with pytest.raises(ValueError, match="smplx_path"):
        build_body_model(BodyModelConfig(kind="smplx"))
    with pytest.raises(FileNotFoundError, match="SMPLX_FEMALE"):
        build_body_model(BodyModelConfig(kind="smplx", smplx_path=str(smplx_file.parent), gender="female"))
    pkl = tmp_path / "SMPLX_NEUTRAL.pkl"
    pkl.write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="pickled"):
        build_body_model(BodyModelConfig(kind="smplx", smplx_path=str(pkl)))
    pickled = tmp_path / "evil.npz"
    np.savez(pickled, **{k: v for k, v in np.load(smplx_file).items()}, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        build_body_model(BodyModelConfig(kind="smplx", smplx_path=str(pickled)))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(smplx_file.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable"):
        build_body_model(BodyModelConfig(kind="smplx", smplx_path=str(broken)))


def test_smplx_loads_from_object_store_uri(smplx_file, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("AVATAR_CACHE_DIR", str(tmp_path / "cache"))
    with fsspec.open("memory://models/smplx/SMPLX_NEUTRAL.npz", "wb") as f:
        f.write(smplx_file.read_bytes())
    body = build_body_model(BodyModelConfig(kind="smplx", smplx_path="memory://models/smplx/SMPLX_NEUTRAL.npz"))
    assert body.num_vertices == 10475


def test_keypoints_and_vertices_match_the_full_forward(body):
    # The fit's fast path must be the same function as forward(), values and gradients.
    torch.manual_seed(1)
    shape = (body.default_shape()[None] + 0.1 * torch.randn(2, body.num_shape_params)).requires_grad_(True)
    pose = (0.3 * torch.randn(2, 55, 3)).requires_grad_(True)
    transl = torch.randn(2, 3)
    index = torch.randperm(body.num_vertices)[:300]
    keypoints, vertices = body.keypoints_and_vertices(shape, pose, transl, index)
    out = body(shape, pose, transl)
    # Float32 (eps 1.2e-7) on coordinates of a few metres, through a kinematic chain ~20 joints
    # deep and blend sums over hundreds of shapes, done in another order: rounding differences up
    # to ~1e-4 m (2.5e-5 seen). Any real mismatch (a wrong joint or blend) is millimetres or more.
    torch.testing.assert_close(keypoints, out.keypoints, atol=2e-4, rtol=0)
    torch.testing.assert_close(vertices, out.vertices[:, index], atol=2e-4, rtol=0)
    fast = torch.autograd.grad(keypoints.sum() + vertices.sum(), [shape, pose])
    full = torch.autograd.grad(out.keypoints.sum() + out.vertices[:, index].sum(), [shape, pose])
    for a, b in zip(fast, full):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_rotation_round_trip_at_every_angle():
    from avatar_ops.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    torch.manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(200, 3), dim=1)
    angles = torch.cat([torch.tensor([0.0, 1e-8, np.pi - 1e-4, np.pi]), torch.rand(196) * np.pi])
    rot = axis_angle_to_matrix(axes * angles[:, None])
    back = axis_angle_to_matrix(matrix_to_axis_angle(rot))
    torch.testing.assert_close(back, rot, atol=1e-5, rtol=0)


def test_parts_that_meet_on_the_mesh_are_joined(anny_body):
    """Two parts side by side in an image that are not joined on the body are one in front of the
    other (the completion leaves their shared outline unread): every pair of parts the mesh joins
    along an edge must be in ``JOINED_PARTS``, or every seam would count as an outline. (On Anny's
    mesh; the tests' synthetic SMPL-X stand-in is not a body's surface.)"""
    from avatar_ops.body.parts import Part, body_parts, joined_parts

    body = anny_body
    part = body_parts(body).part
    edges = torch.cat([body.faces[:, [0, 1]], body.faces[:, [1, 2]], body.faces[:, [2, 0]]])
    a, b = part[edges[:, 0]], part[edges[:, 1]]
    meeting = {(Part(int(x)).name, Part(int(y)).name) for x, y in torch.stack([a, b], 1)[a != b].tolist()}
    joined = joined_parts()
    assert meeting and all(bool(joined[Part[x], Part[y]]) for x, y in meeting), sorted(meeting)
