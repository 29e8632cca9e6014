"""Gaussian avatars on a real photo: reconstruction covers the person and fills what the photo does
not see, skinning carries the Gaussians, fitting improves the match, export and animation work."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_ops.avatar.animate import animate, canonical_pose, turntable
from avatar_ops.avatar.bundle import avatar_from_bytes, avatar_to_bytes
from avatar_ops.avatar.export import export_avatar
from avatar_ops.avatar.fit import PRESET_SETTINGS, FitConfig, FitInput, FittingOperator, PseudoLabel
from avatar_ops.avatar.limits import PartLimits
from avatar_ops.avatar.model import triangle_frames
from avatar_ops.avatar.ply import ply_bytes
from avatar_ops.avatar.reconstruct import ReconstructConfig, ReconstructInput, ReconstructionOperator, ReconstructResult
from avatar_ops.body.base import SMPLX_JOINT_NAMES
from avatar_ops.body.parts import PART_NAMES, Part, body_parts
from avatar_ops.motion import bundled_clips, load_motion
from avatar_ops.render.camera import orbit_cameras

PHOTOS = ["man_hoodie_masked.png", "woman_dress_fullbody.jpg", "elder_fruit_halfbody.jpg"]


@pytest.fixture(scope="module")
def tracked(tracked_samples):
    return {name: tracked_samples[name] for name in PHOTOS}


@pytest.fixture(scope="module")
def reconstructed(tracked, anny_body):
    op = ReconstructionOperator(ReconstructConfig(num_gaussians=PRESET_SETTINGS["preview"]["num_gaussians"]), anny_body)
    return dict(zip(PHOTOS, op([ReconstructInput(*tracked[name]) for name in PHOTOS])))


@pytest.fixture(scope="module")
def fitted_all(reconstructed, tracked, anny_body):
    """Every sample fitted at the `preview` preset as shipped (its resolution and iterations)."""
    op = FittingOperator(FitConfig(preset="preview"), anny_body)
    return dict(zip(PHOTOS, op([FitInput(reconstructed[name], tracked[name][1]) for name in PHOTOS])))


@pytest.fixture(scope="module")
def fitted(fitted_all):
    return fitted_all[PHOTOS[0]]


@pytest.mark.parametrize("name", PHOTOS)
def test_reconstruction_covers_the_person(reconstructed, name):
    rec = reconstructed[name]
    assert isinstance(rec, ReconstructResult), rec
    q = rec.quality
    assert q["mask_coverage"] >= 0.9, q  # clothing and hair included
    assert q["mask_iou"] >= 0.7, q
    assert 0.1 < q["seen_fraction"] < 0.7, q  # at most the front half (the elder shows the body thighs-up)


def test_clothing_push_out_is_what_covers_the_dress(tracked, anny_body, reconstructed):
    no_push = PartLimits(max_offset={name: 0.0 for name in PART_NAMES})
    flat = ReconstructionOperator(ReconstructConfig(num_gaussians=PRESET_SETTINGS["preview"]["num_gaussians"], limits=no_push), anny_body)([ReconstructInput(*tracked[PHOTOS[1]])])[0]
    pushed = reconstructed[PHOTOS[1]]
    assert pushed.quality["mask_coverage"] > flat.quality["mask_coverage"] + 0.03, (pushed.quality, flat.quality)
    assert flat.quality["pushed_fraction"] == 0.0


def test_push_out_is_as_deep_behind_as_in_front(reconstructed, anny_body):
    """The dress is pushed out at the outline, and the rings it is pushed on carry the push round
    to their front and back, so it is as wide from the side as it is from the front."""
    rec = reconstructed[PHOTOS[1]]
    avatar = rec.avatar
    with torch.no_grad():
        rest = anny_body(avatar.shape[None], torch.zeros_like(avatar.source_pose[None])).vertices[0]
    corners = rest[anny_body.faces[avatar.face]]
    normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
    normal = normal / normal.norm(dim=1, keepdim=True)
    part = body_parts(anny_body).of_faces(anny_body.faces).part[avatar.face]
    legs = (part == Part.THIGH) | (part == Part.SHIN)
    side = legs & (normal[:, 0].abs() > 0.8)
    back = legs & (normal[:, 2] < -0.8)
    # The surface's push-out: a Gaussian's offset less the inward shift that ends its footprint
    # where the surface does (larger Gaussians sit deeper; their size follows the layout).
    pushed = avatar.offset + ReconstructConfig().inward * avatar.log_scale[:, 0].exp()
    # Measured 12.6 mm at the side, 8.2 mm behind (the offsets alone: 8.3 and 3.3 mm, and they
    # move with the body fit); with no push-out both are 0.
    assert pushed[side].mean() > 0.006  # the dress reaches beyond the legs
    assert pushed[back].mean() > 0.5 * pushed[side].mean()


def test_unseen_surface_is_filled_from_what_is_seen(reconstructed):
    rec = reconstructed[PHOTOS[0]]
    avatar = rec.avatar
    seen_colors = avatar.color[rec.seen]
    unseen_colors = avatar.color[~rec.seen]
    assert len(unseen_colors) > 0
    # Every unseen colour is a blend of seen colours: inside their range, not a default value. A
    # seen Gaussian takes the mean of its patch of the photo while the completion also reads single
    # pixels, so a rare unseen colour may pass the seen range by a pixel's difference from its
    # patch's mean (on this photo 1 Gaussian in 4682, by 0.002).
    low, high = seen_colors.min(0).values, seen_colors.max(0).values
    inside = ((unseen_colors >= low - 1e-5) & (unseen_colors <= high + 1e-5)).all(1)
    assert inside.float().mean() >= 0.995, inside.float().mean()
    assert (unseen_colors >= low - 0.05).all() and (unseen_colors <= high + 0.05).all(), (unseen_colors.min(0).values, unseen_colors.max(0).values, low, high)


@pytest.mark.parametrize("name", PHOTOS)
def test_back_view_has_no_holes_and_no_background_colour(fitted_all, anny_body, name):
    avatar = fitted_all[name].avatar
    magenta = torch.tensor([1.0, 0.0, 1.0])  # a colour no photo here has
    frames, _ = turntable(avatar, anny_body, n_views=2, size=128, background=magenta)
    front, back = (f.astype(float) / 255 for f in frames)
    is_bg = lambda img: np.abs(img - magenta.numpy()).max(-1) < 0.08
    front_fg, back_fg = ~is_bg(front), ~is_bg(back)
    # The back covers as much as the body's own back does (a pose reaching towards the camera
    # shows more from the front: perspective), within 10 %, with the silhouette mirrored.
    from avatar_ops.render.mesh import rasterize_mesh

    _, cams = turntable(avatar, anny_body, n_views=2, size=128)
    with torch.no_grad():
        vertices = anny_body(avatar.shape[None], canonical_pose(avatar)).vertices[0]
    body_fg = [rasterize_mesh(vertices @ cams.viewmats[c, :3, :3].T + cams.viewmats[c, :3, 3], anny_body.faces, cams.Ks[c], 128, 128).mask.numpy() for c in range(2)]
    expected = body_fg[1].sum() / body_fg[0].sum()
    assert back_fg.sum() >= 0.9 * expected * front_fg.sum(), (back_fg.sum(), front_fg.sum(), expected)
    mirrored = front_fg[:, ::-1]
    assert (back_fg & mirrored).sum() >= 0.85 * min(1.0, expected) * mirrored.sum()
    # Inside it (away from the anti-aliased outline), the colours are the person's, not the
    # background showing through holes.
    from scipy import ndimage

    inside = ndimage.binary_erosion(back_fg & mirrored, iterations=2)
    near_bg = np.abs(back[inside] - magenta.numpy()).max(-1) < 0.3
    assert near_bg.mean() < 0.02, near_bg.mean()


def test_gaussians_ride_on_the_skinned_mesh(reconstructed, anny_body):
    avatar = reconstructed[PHOTOS[0]].avatar
    pose = canonical_pose(avatar)
    raised = pose.clone()
    raised[0, SMPLX_JOINT_NAMES.index("left_shoulder")] = torch.tensor([0.0, 0.0, 1.0])
    with torch.no_grad():
        a = avatar.posed(anny_body, pose)
        b = avatar.posed(anny_body, raised)
        out = anny_body(avatar.shape[None], raised)
    moved = (a["means"][0] - b["means"][0]).norm(dim=1)
    weights = anny_body.skinning_weights
    arm_bones = [i for i, n in enumerate(anny_body.joint_names) if any(k in n for k in ("upperarm", "lowerarm", "wrist", "finger", "metacarpal")) and n.endswith(".L")]
    arm_vertex = weights[:, arm_bones].sum(1) > 0.9
    on_arm = arm_vertex[anny_body.faces[avatar.face]].all(1)
    on_legs = torch.tensor(["leg" in anny_body.joint_names[j] or "foot" in anny_body.joint_names[j] for j in weights.argmax(1).tolist()])[anny_body.faces[avatar.face]].all(1)
    assert on_arm.sum() > 50 and moved[on_arm].min() > 0.05  # the arm's Gaussians follow the arm
    assert moved[on_legs].max() < 1e-4  # the legs' do not move
    # Each Gaussian sits at its offset above its triangle's plane.
    frames, _ = triangle_frames(out.vertices, anny_body.faces)
    corner = out.vertices[0, anny_body.faces[avatar.face, 0]]
    height = ((b["means"][0] - corner) * frames[0, avatar.face, :, 2]).sum(1)
    torch.testing.assert_close(height, avatar.offset, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", PHOTOS)
def test_preview_fit_matches_the_photo_inside_the_mask(fitted_all, name):
    q = fitted_all[name].quality
    # At the preview's 256-pixel supervision. Measured: 26.6, 26.3 and 24.3 dB; the half-body photo
    # (fruit and hands in front of the body, a finer print) is the hardest. The bars sit more than
    # 10 % below (2.8 dB or more), so a machine's rounding cannot fail them; the photos before the
    # fit score 21.8, 20.9 and 15.2 dB, and the fit must gain 3 dB on top (below).
    assert q["psnr"] >= (21.5 if name.startswith("elder") else 23.5), q
    assert q["psnr"] > q["psnr_before"] + 3.0, q


@pytest.mark.parametrize("name", PHOTOS)
def test_the_fit_does_not_paint_the_neck_and_torso_with_what_lies_beside_them(fitted_all, reconstructed, anny_body, name):
    """Along the body's own outline, and its inner outlines, the photo may show what lies behind
    or in front of the body: the dress sample's hair hangs behind her neck, and where the fitted
    neck overlaps it the fit painted the neck black (in every other view, a black patch under the
    chin). Reconstruction leaves those bands unread; the fit moves their colours only a little.
    Of the neck's and the torso's Gaussians, those the fit darkened by more than 0.3 in luminance
    (hoodie, dress, elder): measured 12, 10 and 7; 23, 39 and 10 when the fit moved every colour the
    photo shows as far as the photo said."""
    rec, fitted = reconstructed[name].avatar, fitted_all[name].avatar
    part = body_parts(anny_body).of_faces(anny_body.faces).part[rec.face]
    luminance = torch.tensor([0.3, 0.59, 0.11])
    darkened = ((rec.color - fitted.color) @ luminance > 0.3) & ((part == Part.NECK) | (part == Part.TORSO))
    assert int(darkened.sum()) <= 16, int(darkened.sum())


@pytest.mark.parametrize("name", PHOTOS)
def test_fitted_gaussians_stay_within_their_limits(fitted_all, anny_body, name):
    from tests.avatar_ops.test_completion import assert_within_limits

    assert_within_limits(fitted_all[name].avatar, anny_body, PartLimits())


def _part_colours(avatar, body, frames, cams, pose, groups) -> dict[str, np.ndarray]:
    """Median RGB [3] of each group of parts in each frame: the avatar's pixels where the posed
    body mesh shows those parts (two pixels in from their edges)."""
    from scipy import ndimage

    from avatar_ops.render.mesh import rasterize_mesh

    parts = body_parts(body).of_faces(body.faces).part
    with torch.no_grad():
        vertices = body(avatar.shape[None], pose).vertices[0]
    out = {}
    for c, frame in enumerate(frames):
        view = cams.viewmats[c]
        frags = rasterize_mesh(vertices @ view[:3, :3].T + view[:3, 3], body.faces, cams.Ks[c], cams.width, cams.height)
        label = torch.where(frags.mask, parts[frags.face.clamp(min=0)], torch.full_like(frags.face, -1)).numpy()
        for name, group in groups.items():
            region = ndimage.binary_erosion(np.isin(label, [int(p) for p in group]), iterations=2)
            out[f"{name}_{c}"] = np.median(frame[region].astype(np.float64) / 255, 0) if region.sum() > 20 else None
    return out


@pytest.mark.parametrize("name", PHOTOS)
def test_the_back_wears_the_fronts_colours(fitted_all, anny_body, name):
    """The back of the torso and of the legs (a turntable's back frame) has the front's colours:
    their median colours within 15 CIELAB units."""
    from tests.avatar_ops.test_completion import delta_e

    avatar = fitted_all[name].avatar
    frames, cams = turntable(avatar, anny_body, n_views=2, size=256)
    groups = {"torso": (Part.TORSO,), "legs": (Part.THIGH, Part.SHIN)}
    colours = _part_colours(avatar, anny_body, frames, cams, canonical_pose(avatar), groups)
    for group in groups:
        front, back = colours[f"{group}_0"], colours[f"{group}_1"]
        assert front is not None and back is not None, group
        assert delta_e(front, back) < 15, (group, front, back)


@pytest.mark.parametrize("name", PHOTOS)
def test_the_animations_hands_are_skin(fitted_all, tracked, anny_body, name):
    """In the bundled wave, the hands' pixels have the colour of the face's skin in the photo,
    not the black of the photo's background: within 25 CIELAB units. Measured (two frames, one
    and two threads): hoodie 2-5, dress 17-18, elder 17-19 (her hands hold a green fruit, which
    the fit paints on them where the photo shows it over them); black is 50 or more from any of
    their skins. The bar was 20 until the elder's 19 sat within 5 % of it."""
    from avatar_ops.body.base import KEYPOINT_NAMES
    from tests.avatar_ops.test_completion import delta_e

    track, rgb = tracked[name]
    kp = {n: track.keypoints[i] for i, n in enumerate(KEYPOINT_NAMES)}
    # The skin between the nose and the eyes: a few pixels around the point halfway.
    cx, cy = (kp["nose"][:2] + 0.5 * (kp["left_eye"][:2] + kp["right_eye"][:2])) / 2
    r = max(2, int(0.15 * abs(kp["left_eye"][0] - kp["right_eye"][0])))
    skin = np.median(rgb[int(cy) - r : int(cy) + r + 1, int(cx) - r : int(cx) + r + 1].reshape(-1, 3).astype(np.float64) / 255, 0)
    avatar = fitted_all[name].avatar
    motion = load_motion("wave")
    picks = [0, len(motion) // 2]
    # The two frames alone (the camera and the translation are taken from the first, as in the clip).
    frames = animate(avatar, anny_body, dataclasses.replace(motion, pose=motion.pose[picks], transl=motion.transl[picks]), size=256)
    pose = motion.pose[picks].clone()
    pose[:, 25:] = avatar.source_pose[25:]
    from avatar_ops.render.camera import Cameras

    for frame, p, t in zip(frames, pose, motion.transl[picks]):
        with torch.no_grad():
            centre = anny_body(avatar.shape[None], p[None]).joints[0, 0]
        cams = orbit_cameras(1, centre, 3.2, 5.0, 256)
        with torch.no_grad():
            moved = anny_body(avatar.shape[None], p[None], (t - motion.transl[0])[None]).vertices[0]
        from avatar_ops.render.mesh import rasterize_mesh

        view = cams.viewmats[0]
        frags = rasterize_mesh(moved @ view[:3, :3].T + view[:3, 3], anny_body.faces, cams.Ks[0], 256, 256)
        parts = body_parts(anny_body).of_faces(anny_body.faces).part
        hands = frags.mask & (parts[frags.face.clamp(min=0)] == Part.HAND)
        assert hands.sum() > 10
        colour = np.median(frame[hands.numpy()].astype(np.float64) / 255, 0)
        assert delta_e(colour, skin) < 25, (colour, skin)
    del Cameras


def test_fitting_improves_the_photo_match(fitted, reconstructed):
    q = fitted.quality
    assert q["alpha_iou"] >= 0.85, q
    assert torch.isfinite(fitted.avatar.color).all() and fitted.avatar.color.min() >= 0 and fitted.avatar.color.max() <= 1


def test_fitting_uses_pseudo_label_views(reconstructed, tracked, anny_body):
    rec = reconstructed[PHOTOS[0]]
    avatar = rec.avatar
    cams = orbit_cameras(1, torch.tensor([0.0, 0.0, 0.0]), 3.0, 0.0, 64, start_deg=30.0)
    pose = canonical_pose(avatar)
    with torch.no_grad():
        target = avatar.render(anny_body, pose, torch.zeros(1, 3), cams)
    # A pseudo-label that says the avatar is red from 30 degrees: fitting must move towards it.
    red = torch.zeros_like(target.rgb[0])
    red[..., 0] = 1.0
    label = PseudoLabel(image=red, mask=target.alpha[0, ..., 0], camera=cams, pose=pose[0], transl=torch.zeros(3), weight=1.0)
    op = FittingOperator(FitConfig(iters=10, resolution=64), anny_body)
    with_label = op([FitInput(rec, tracked[PHOTOS[0]][1], [label])])[0]
    without = op([FitInput(rec, tracked[PHOTOS[0]][1])])[0]
    assert with_label.quality["pseudo_labels"] == 1.0
    redness = lambda a: float((a.color[:, 0] - a.color[:, 1:].mean(1)).mean())
    assert redness(with_label.avatar) > redness(without.avatar) + 0.02


def test_a_batch_of_avatars_fits_as_each_would_alone(reconstructed, tracked, anny_body):
    """The fitting operator optimises its batch together (one body pass, one rasteriser call per
    step; on CUDA one gsplat call): each avatar must come out as it would fitted on its own."""
    op = FittingOperator(FitConfig(iters=5, resolution=64), anny_body)
    items = [FitInput(reconstructed[name], tracked[name][1]) for name in PHOTOS[:2]]
    together = op(items)
    for item, got in zip(items, together):
        alone = op([item])[0]
        assert got.quality == pytest.approx(alone.quality, abs=0.05)
        cams = got.avatar.source_camera(64 / max(got.avatar.width, got.avatar.height))
        with torch.no_grad():
            a = got.avatar.render(anny_body, got.avatar.source_pose[None], got.avatar.source_transl[None], cams)
            b = alone.avatar.render(anny_body, alone.avatar.source_pose[None], alone.avatar.source_transl[None], cams)
        assert float((a.rgb - b.rgb).abs().mean()) < 2e-3
    rec = reconstructed[PHOTOS[0]]
    other_body = dataclasses.replace(rec, avatar=dataclasses.replace(rec.avatar, body_model="smplx"))
    with pytest.raises(ValueError, match="built on the 'smplx' body, got a 'anny' body"):
        op([FitInput(other_body, tracked[PHOTOS[0]][1])])


def test_export_bundle_ply_and_previews(fitted, anny_body, tmp_path):
    from plyfile import PlyData

    avatar = fitted.avatar
    files = export_avatar(avatar, anny_body, str(tmp_path / "a"), turntable_views=4, preview_size=64, animation_frames=6)
    assert set(files) == {
        "avatar.safetensors", "avatar.json", "avatar.ply", "avatar_canonical.ply", "avatar_canonical.splat", "avatar.glb",
        "viewer.html", "preview.png", "turntable.gif", "animation.gif", "contact_sheet.png",
    }  # fmt: skip
    fields = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    for name in ("avatar.ply", "avatar_canonical.ply"):
        vertex = PlyData.read(str(tmp_path / "a" / name))["vertex"]
        assert vertex.count == len(avatar)
        assert list(vertex.data.dtype.names) == fields
        np.testing.assert_allclose(vertex["opacity"], avatar.opacity_logit.numpy(), rtol=1e-6)
        np.testing.assert_allclose(vertex["scale_0"], avatar.log_scale[:, 0].numpy(), rtol=1e-6)
        rot = np.stack([vertex[f"rot_{i}"] for i in range(4)], 1)
        np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-4)
    photo_pose = PlyData.read(str(tmp_path / "a" / "avatar.ply"))["vertex"]
    t_pose = PlyData.read(str(tmp_path / "a" / "avatar_canonical.ply"))["vertex"]
    assert np.ptp(t_pose["x"]) > np.ptp(photo_pose["x"]) + 0.3  # arms out in the T-pose, down in the photo
    meta = json.loads((tmp_path / "a" / "avatar.json").read_text())
    assert meta["body_model"] == "anny" and "torch" in meta["versions"] and meta["num_gaussians"] == len(avatar)
    sheet = Image.open(tmp_path / "a" / "contact_sheet.png")
    assert sheet.size == (64 * 5, 64)  # fitted, back, three animation frames (no photo given)
    back = avatar_from_bytes((tmp_path / "a" / "avatar.safetensors").read_bytes())
    for name in avatar.TENSORS:
        torch.testing.assert_close(getattr(back, name), getattr(avatar, name))
    assert ply_bytes(back, anny_body) == ply_bytes(avatar, anny_body)
    gif = Image.open(tmp_path / "a" / "turntable.gif")
    assert gif.n_frames == 4 and gif.size == (64, 64)
    with pytest.raises(ValueError, match="not an avatar bundle"):
        from safetensors.torch import save

        avatar_from_bytes(save({"x": torch.zeros(1)}))


def test_bundled_clips_animate_the_avatar(fitted, anny_body):
    assert {"walk", "wave"} <= set(bundled_clips())
    for name in ("walk", "wave"):
        motion = load_motion(name)
        assert len(motion) >= 30 and motion.pose.shape[1:] == (55, 3)
        frames = animate(fitted.avatar, anny_body, motion, size=48, max_frames=24)
        assert frames.shape == (24, 48, 48, 3) and frames.dtype == np.uint8
        change = np.abs(frames[len(frames) // 3].astype(int) - frames[0].astype(int)).mean()
        assert change > 0.5, name  # the avatar moves
        assert (frames[0] < 250).any(-1).mean() > 0.05  # and is visible


def test_motion_files_in_amass_layouts(tmp_path):
    frames = 5
    orient = np.zeros((frames, 3), np.float32)
    body = np.zeros((frames, 63), np.float32)
    body[:, 3 * 3] = 0.5  # left knee (joint 4) in body_pose's 21 joints
    buf = io.BytesIO()
    np.savez(buf, global_orient=orient, body_pose=body, trans=np.zeros((frames, 3), np.float32), up_axis=np.str_("z"))
    motion = load_motion(buf.getvalue())
    assert len(motion) == frames and math.isclose(float(motion.pose[0, 4, 0]), 0.5)
    # z-up clips are turned y-up: an identity root becomes -90 degrees about x.
    torch.testing.assert_close(motion.pose[0, 0], torch.tensor([-math.pi / 2, 0.0, 0.0]))
    poses = np.zeros((frames, 156), np.float32)  # SMPL-H layout: 52 joints
    path = tmp_path / "clip.npz"
    np.savez(path, poses=poses, mocap_framerate=np.float32(60))
    assert load_motion(str(path)).fps == 60.0
    bad = io.BytesIO()
    np.savez(bad, poses=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled"):
        load_motion(bad.getvalue())
    with pytest.raises(ValueError, match="bundled clip"):
        load_motion("no_such_clip")
    with pytest.raises(ValueError, match="`poses` must be"):
        b = io.BytesIO()
        np.savez(b, poses=np.zeros((3, 10), np.float32))
        load_motion(b.getvalue())


def test_bundle_round_trips_through_bytes(reconstructed):
    avatar = reconstructed[PHOTOS[0]].avatar
    data, meta = avatar_to_bytes(avatar)
    assert meta["num_gaussians"] == len(avatar)
    assert len(avatar_from_bytes(data)) == len(avatar)


def test_silhouette_follows_the_root_translation(reconstructed, anny_body):
    from avatar_ops.motion import Motion

    avatar = reconstructed[PHOTOS[0]].avatar
    frames_n, size, distance = 4, 96, 3.2
    pose = canonical_pose(avatar).expand(frames_n, -1, -1).clone()
    shift = torch.linspace(0.0, 0.6, frames_n)
    transl = torch.stack([shift, torch.zeros(frames_n), torch.zeros(frames_n)], 1)  # walking to the body's left (+x)
    frames = animate(avatar, anny_body, Motion(pose=pose, transl=transl, fps=30.0), size=size, distance=distance)
    centroids = []
    for frame in frames:
        _ys, xs = np.nonzero((frame < 245).any(-1))
        centroids.append(xs.mean())
    focal = 0.5 * size / math.tan(math.radians(20.0))  # orbit_cameras' default 40-degree field of view
    expected = focal * shift.numpy() / distance  # pixels; +x is image right for a camera in front
    np.testing.assert_allclose(np.array(centroids) - centroids[0], expected, atol=2.0)


def test_the_finer_colour_mesh_is_the_same_surface(anny_body):
    """The colour field's subdivided mesh: a point given on the body mesh (face, barycentrics) is
    the same point on the finer mesh, and the body's z-buffer read as the finer mesh's shows the
    same surface at every pixel."""
    from avatar_ops.avatar.subdivision import Subdivision
    from avatar_ops.avatar.visibility import mesh_view
    from avatar_ops.body.base import zero_pose
    from avatar_ops.render.camera import intrinsics_for

    faces = anny_body.faces
    fine = Subdivision.of(faces, anny_body.num_vertices)
    assert fine.faces.shape == (4 * len(faces), 3)
    assert int(fine.faces.max()) + 1 == anny_body.num_vertices + len(fine.edges)
    with torch.no_grad():
        verts = anny_body(anny_body.default_shape()[None], zero_pose(1)).vertices[0] + torch.tensor([0.0, 0.0, 3.0])
    fine_verts = fine.vertices(verts)
    generator = torch.Generator().manual_seed(0)
    face = torch.randint(len(faces), (5000,), generator=generator)
    bary = torch.distributions.Dirichlet(torch.ones(3)).sample((5000,))
    bary[:3] = torch.eye(3)  # the corners themselves
    child, fine_bary = fine.locate(face, bary)
    assert (fine_bary >= 0).all() and torch.allclose(fine_bary.sum(1), torch.ones(5000), atol=1e-6)
    coarse_point = (bary[:, :, None] * verts[faces[face]]).sum(1)
    fine_point = (fine_bary[:, :, None] * fine_verts[fine.faces[child]]).sum(1)
    # Positions about 3 m from the origin in float32 (a few ulps of 2.4e-7 each): 1e-5 m is wide.
    assert (coarse_point - fine_point).norm(dim=1).max() < 1e-5
    view = mesh_view(verts, faces, torch.from_numpy(intrinsics_for(256, 256, 1.2)), 256, 256, 256)
    assert view.frags.mask.sum() > 1000
    coarse_image = view.frags.interpolate(verts, faces)
    fine_image = fine.view(view).frags.interpolate(fine_verts, fine.faces)
    assert torch.equal(fine.view(view).frags.mask, view.frags.mask)
    assert (coarse_image - fine_image).norm(dim=-1).max() < 1e-5


@pytest.mark.parametrize(
    "metadata, message",
    [(None, "not an avatar bundle \\(safetensors\\)"), ("[1]", "must be a JSON object, got list"), ("[" * 100_000, "not valid JSON"),
     ('{"format_version": 1, "width": [1], "height": 2, "body_model": "anny"}', "needs `body_model`")],
)  # fmt: skip
def test_a_hostile_bundle_is_a_value_error(metadata, message):
    """Bundles come from users (`animate`): every malformed one is a ValueError naming what is wrong."""
    from safetensors.torch import save

    from avatar_ops.avatar.bundle import avatar_from_bytes
    from avatar_ops.avatar.model import GaussianAvatar

    if metadata is None:
        data = b"\x08\x00\x00\x00\x00\x00\x00\x00not json and no tensors"
    else:
        data = save({name: torch.zeros(1) for name in GaussianAvatar.TENSORS}, metadata={"avatar": metadata})
    with pytest.raises(ValueError, match=message):
        avatar_from_bytes(data)
