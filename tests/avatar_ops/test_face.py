"""Face tracking: Face Mesh landmarks placed on the body's own face, and the head, jaw and
expression fitted to them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES, SMPLX_PARENTS, zero_pose
from avatar_ops.body.rotations import axis_angle_to_matrix
from avatar_ops.render.camera import project
from avatar_ops.tracking.face import (
    CHIN, FACE_JOINTS, NUM_FACE_LANDMARKS, FaceCalibrationError, FaceConfig, FaceDetector, FaceEmbedding, FaceObservation,
    face_embedding, fit_faces, shaded_picture,
)  # fmt: skip

# Face Mesh landmarks: the eyes' corners (subject's right: 33 outer, 133 inner; left: 263, 362),
# the nose tip and the middle of the upper lip.
RIGHT_EYE, LEFT_EYE, NOSE_TIP, UPPER_LIP = (33, 133), (263, 362), 1, 0


def _global_rotation(pose: torch.Tensor, joint: str) -> torch.Tensor:
    """[3, 3] the world rotation of ``joint`` under a [55, 3] pose (its chain from the root)."""
    chain, j = [], SMPLX_JOINT_NAMES.index(joint)
    while j >= 0:
        chain.append(j)
        j = SMPLX_PARENTS[j]
    rotation = torch.eye(3)
    for j in reversed(chain):
        rotation = rotation @ axis_angle_to_matrix(pose[j].float())
    return rotation


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = ((a.T @ b).trace() - 1) / 2
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))))


def _facing_pose() -> torch.Tensor:
    """[1, 55, 3] facing the camera (OpenCV axes), arms lowered."""
    pose = zero_pose(1)
    pose[0, 0, 0] = torch.pi
    pose[0, SMPLX_JOINT_NAMES.index("left_shoulder"), 2] = -1.1
    pose[0, SMPLX_JOINT_NAMES.index("right_shoulder"), 2] = 1.1
    return pose


def test_the_landmarks_sit_on_the_body_s_own_face(anny_body):
    """Face Mesh, run on Anny's rendered face, puts its eye corners around Anny's eyes, its nose tip
    in front of them and its upper lip below the nose, each on the face's surface."""
    embedding = face_embedding(anny_body)
    assert face_embedding(anny_body) is embedding  # placed once per body
    assert embedding.weights.shape == (NUM_FACE_LANDMARKS, len(embedding.vertex_index))
    torch.testing.assert_close(embedding.weights.sum(1), torch.ones(NUM_FACE_LANDMARKS), atol=1e-5, rtol=0)
    with torch.no_grad():
        out = anny_body(anny_body.default_shape()[None], zero_pose(1))  # y up, facing +z
        marks = embedding.landmarks(out.vertices[:, embedding.vertex_index])[0]
    keypoint = {n: out.keypoints[0, KEYPOINT_NAMES.index(n)] for n in ("left_eye", "right_eye", "nose")}
    for corners, eye in ((RIGHT_EYE, "right_eye"), (LEFT_EYE, "left_eye")):
        centre = marks[list(corners)].mean(0)
        assert float((centre - keypoint[eye])[:2].norm()) < 0.012, (eye, centre, keypoint[eye])  # eye width about 3 cm
    eyes = 0.5 * (keypoint["left_eye"] + keypoint["right_eye"])
    assert float(marks[NOSE_TIP, 2] - eyes[2]) > 0.01  # the nose stands out in front of the eyes
    assert float(marks[LEFT_EYE[0], 0]) > float(marks[RIGHT_EYE[0], 0])  # the subject's left at +x
    assert float(eyes[1]) > float(marks[NOSE_TIP, 1]) > float(marks[UPPER_LIP, 1]) > float(marks[CHIN, 1])


@pytest.mark.parametrize("head", [(0.0, 0.5, 0.0), (0.3, 0.0, 0.0), (-0.2, -0.3, 0.15)], ids=["turned", "nodding", "tilted"])
def test_the_fit_recovers_a_turned_head(anny_body, head):
    """A head turned, nodded or tilted by 17 to 29 degrees: Face Mesh on the rendered picture, then
    the fit, started from the head straight, brings it within 6 degrees of the truth (measured 2 to
    3: Face Mesh's own error on a rendered face)."""
    detector = FaceDetector()
    try:
        pose = _facing_pose()
        truth = pose.clone()
        truth[0, SMPLX_JOINT_NAMES.index("head")] = torch.tensor(head)
        shape = anny_body.default_shape()[None]
        with torch.no_grad():
            eyes = anny_body(shape, truth).keypoints[0, 1:3].mean(0)
            transl = torch.tensor([[0.0, 0.05, 0.9]]) - eyes[None]  # the eyes 0.9 m in front of the camera
            out = anny_body(shape, truth, transl)
        width, height = 384, 512
        K = torch.tensor([[614.4, 0, width / 2], [0, 614.4, height / 2], [0, 0, 1.0]])
        rgb, _ = shaded_picture(out.vertices[0], anny_body.faces, K, width, height)
        keypoints = torch.cat([project(out.keypoints, K[None])[0], torch.ones(len(KEYPOINT_NAMES), 1)], 1).numpy()
        seen = detector(rgb, keypoints)
    finally:
        detector.close()
    assert seen is not None and seen.keypoints.shape == (NUM_FACE_LANDMARKS, 2)
    fit = fit_faces(anny_body, shape, pose, transl, K[None], [seen], face_embedding(anny_body))[0]
    start = _angle_deg(_global_rotation(truth[0], "head"), _global_rotation(pose[0], "head"))
    error = _angle_deg(_global_rotation(truth[0], "head"), _global_rotation(torch.from_numpy(fit.pose), "head"))
    assert start > 15 and error < 6.0, (start, error)
    assert fit.tracked and fit.expression is None  # Anny has no expressions
    np.testing.assert_array_equal(fit.pose[SMPLX_JOINT_NAMES.index("jaw")], np.zeros(3))  # nor a jaw
    untouched = [j for j in range(55) if j not in FACE_JOINTS]
    np.testing.assert_array_equal(fit.pose[untouched], pose[0, untouched].numpy())


def _synthetic_embedding(body, seed: int = 0) -> FaceEmbedding:
    """468 points on the synthetic SMPL-X's head and jaw triangles (it has no face to recognise)."""
    dominant = body.skinning_weights.argmax(1)[body.faces]  # [F, 3]
    head, jaw = (SMPLX_JOINT_NAMES.index(n) for n in ("head", "jaw"))
    ids = [torch.nonzero((dominant == j).all(1))[:, 0] for j in (head, jaw)]
    generator = torch.Generator().manual_seed(seed)
    triangle = torch.cat([ids[k][torch.randint(len(ids[k]), (NUM_FACE_LANDMARKS // 2,), generator=generator)] for k in (0, 1)])
    bary = torch.rand(NUM_FACE_LANDMARKS, 3, generator=generator) + 0.1
    return FaceEmbedding.from_triangles(body.faces, triangle, bary / bary.sum(1, keepdim=True))


def test_the_fit_recovers_jaw_and_expression_on_smplx(smplx_body):
    """SMPL-X opens its jaw and takes expression coefficients: from the landmarks of a body with
    its mouth open 0.3 rad and a known expression (moving them 12 px on average), the fit (its
    expression prior made negligible: this is about what the landmarks determine) recovers the jaw
    within 0.05 rad and an expression that moves the landmarks as the true one does, within 15 %
    of that motion (measured 4 %; coefficients of bumps no landmark sees are free)."""
    embedding = _synthetic_embedding(smplx_body)
    pose = _facing_pose()
    truth = pose.clone()
    truth[0, SMPLX_JOINT_NAMES.index("jaw")] = torch.tensor([0.3, 0.0, 0.0])
    expression = torch.linspace(-1.5, 1.5, smplx_body.num_expression_coeffs)[None]
    shape = smplx_body.default_shape()[None]
    transl = torch.tensor([[0.0, 1.0, 0.8]])
    K = torch.tensor([[1000.0, 0, 256], [0, 1000.0, 256], [0, 0, 1]])

    def landmarks(p: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, vertices = smplx_body.keypoints_and_vertices(shape, p, transl, embedding.vertex_index, e)
            return project(embedding.landmarks(vertices), K[None])[0]

    seen = FaceObservation(landmarks(truth, expression).numpy(), (0, 0, 512, 512))
    two = lambda t: t.expand(2, *t.shape[1:])  # noqa: E731  (a photo without a face beside it)
    fit = fit_faces(smplx_body, two(shape), two(pose), two(transl), two(K[None]), [None, seen], embedding, FaceConfig(iters=100, expression_weight=1e-7))
    assert fit[0] is None
    got = fit[1]
    assert got.tracked and got.error_px < 1.0, got.error_px
    jaw = got.pose[SMPLX_JOINT_NAMES.index("jaw")]
    assert abs(jaw[0] - 0.3) < 0.05 and np.abs(jaw[1:]).max() < 0.05, jaw
    neutral = landmarks(truth, torch.zeros_like(expression))
    true_motion = landmarks(truth, expression) - neutral
    fitted_motion = landmarks(truth, torch.from_numpy(got.expression)[None]) - neutral
    assert float(true_motion.norm(dim=-1).mean()) > 8.0
    assert float((fitted_motion - true_motion).norm(dim=-1).mean()) < 0.15 * float(true_motion.norm(dim=-1).mean())


def test_a_body_whose_face_is_not_recognised_is_refused_at_start(smplx_body, detector):
    """The synthetic SMPL-X has no face: the tracker with the face on fails when built, naming the
    setting that turns it off, instead of failing every photo."""
    from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator

    faces = FaceDetector()
    try:
        with pytest.raises(FaceCalibrationError, match="face.enabled"):
            TrackingOperator(TrackingConfig(device="cpu"), smplx_body, detector, None, faces)
    finally:
        faces.close()
    tracker = TrackingOperator(TrackingConfig(device="cpu", face={"enabled": False}), smplx_body, detector)
    assert tracker.face_embedding is None


def test_embedding_and_fit_arguments_are_checked(anny_body):
    with pytest.raises(ValueError, match="`triangle` and `bary` must be"):
        FaceEmbedding.from_triangles(anny_body.faces, torch.zeros(10, dtype=torch.long), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="`expression` must be"):
        anny_body(anny_body.default_shape()[None], zero_pose(1), None, torch.zeros(1, 10))
    with pytest.raises(ValueError, match="observations"):
        fit_faces(anny_body, anny_body.default_shape()[None], zero_pose(1), torch.zeros(1, 3), torch.eye(3)[None], [None, None], face_embedding(anny_body))


def _clip(frames: int = 4, **arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, poses=np.zeros((frames, 66), np.float32), **arrays)
    return buf.getvalue()


def test_a_talking_head_clip_drives_the_jaw_and_expression(smplx_body, anny_body):
    """A clip's ``jaw_pose`` and ``expression`` move an SMPL-X avatar's face and nothing else; a
    clip without them leaves the photo's jaw; Anny, with neither, plays the body only."""
    from avatar_ops.avatar.animate import played_expression, played_motion
    from avatar_ops.motion import load_motion
    from tests.avatar_ops.test_splat_files import tiny_avatar

    frames = 4
    jaw = np.zeros((frames, 3), np.float32)
    jaw[:, 0] = np.linspace(0.0, 0.4, frames)
    expression = np.tile(np.linspace(-2.0, 2.0, 12, dtype=np.float32), (frames, 1))  # 12 > the body's 10: truncated
    talking = load_motion(_clip(frames, jaw_pose=jaw, expression=expression))
    silent = load_motion(_clip(frames))
    assert talking.drives_jaw and talking.expression.shape == (frames, 12) and not silent.drives_jaw and silent.expression is None
    avatar = tiny_avatar(smplx_body)
    avatar.source_pose[SMPLX_JOINT_NAMES.index("jaw")] = torch.tensor([0.1, 0.0, 0.0])  # the photo's open mouth
    pose, transl = played_motion(avatar, talking)
    torch.testing.assert_close(pose[:, SMPLX_JOINT_NAMES.index("jaw")], torch.from_numpy(jaw))
    silent_pose, _ = played_motion(avatar, silent)
    torch.testing.assert_close(silent_pose[:, SMPLX_JOINT_NAMES.index("jaw")], torch.tensor([[0.1, 0.0, 0.0]]).expand(frames, 3))
    played = played_expression(smplx_body, talking)
    torch.testing.assert_close(played, torch.from_numpy(expression[:, :10]))
    with torch.no_grad():
        moved = avatar.posed(smplx_body, pose, transl, played)["means"][-1]
        still = avatar.posed(smplx_body, silent_pose, transl)["means"][-1]
    part = smplx_body.skinning_weights.argmax(1)[smplx_body.faces[avatar.face, 0]]
    face = torch.isin(part, torch.tensor([SMPLX_JOINT_NAMES.index(n) for n in ("head", "jaw")]))
    legs = torch.isin(part, torch.tensor([SMPLX_JOINT_NAMES.index(n) for n in ("left_knee", "right_knee")]))
    shift = (moved - still).norm(dim=-1)
    assert float(shift[face].max()) > 0.005 and float(shift[legs].max()) < 1e-5, (float(shift[face].max()), float(shift[legs].max()))
    assert played_expression(anny_body, talking) is None
    with pytest.raises(ValueError, match="`expression` must be"):
        load_motion(_clip(frames, expression=np.zeros((frames + 1, 10), np.float32)))
    with pytest.raises(ValueError, match="`jaw_pose` must be"):
        load_motion(_clip(frames, jaw_pose=np.zeros((frames, 4), np.float32)))
    with pytest.raises(ValueError, match="`expression` must hold finite"):
        load_motion(_clip(frames, expression=np.full((frames, 10), np.inf, np.float32)))
