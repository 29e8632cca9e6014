"""Ground-truth quality benchmark: how the avatar holds up from every side and in new poses.
Prints JSON; writes PNG sheets with ``--save``.

Subjects (``bench/subjects.py``): textured Anny bodies with a face, hair and garments, in varied
shapes, skin tones and poses (arms bent towards the camera, a stride, a turned torso, ...; every
other subject's fingers bent, as in a loose fist). Two
sets: ``consistent`` (each garment's back has the front's colour and weave but not its print) and
``hard`` (an unrelated back), reported separately.

Each subject is rendered (z-buffered textured mesh, 2x supersampled) from 8 cameras on a circle;
camera 0 is the photo: in front of the subject, or behind it with ``--photo-from back`` (the
person seen from behind; the figures' angles then count from behind). Three entry points build the
avatar, each reported on its own:

* ``oracle``: the true body (shape, pose, camera-frame placement) and the true mask go straight
  to reconstruction and fitting: this isolates appearance completion and fitting.
* ``keypoints``: the true 2D keypoints and mask go through the tracker (the body fit).
* ``landmarks``: as ``keypoints``, with the true metric 3D landmarks (hip-centred, camera axes) in
  place of the detector's: what the body fit makes of a perfect detector. Against ``photo``, it
  tells the fit's own error from the detector's.
* ``photo``: the RGBA cut-out goes through the detector and everything after it, exactly as
  ``generate`` does (the pipeline's own operators and default configs).

The fitted body is aligned to the true one by a similarity transform (Umeyama, over the 22 SMPL-X
body joints); PA-MPJPE and the per-vertex surface error (PVE) are reported after it. Each hand is
aligned on its own (its wrist and 15 finger joints) for the fingers' PA-MPJPE over the 30 finger
joints, as hand benchmarks do. ``facing_right`` counts the subjects whose fitted body faces the
way the photo shows it (front, or back with ``--photo-from back``). The aligned
avatar is rendered from the 8 cameras, and in new poses (frames of the bundled ``walk`` and
``wave`` clips: the true body re-posed against the avatar animated to the same joint angles,
each aligned the same way) from the same 8 cameras. The input view is the avatar as it is, in the
photo's camera.

Figures per render: PSNR over the intersection and over the union of the two silhouettes, SSIM
over the person's box (scikit-image, 11-pixel Gaussian window, sigma 1.5, as published figures
are computed), silhouette IoU. The representation ceiling is the true textured mesh sampled into
the same number of Gaussians (true colours, the reconstruction's sizes), rendered the same way.

    python bench/quality.py [--subjects 6] [--sets consistent hard] [--entries oracle keypoints landmarks photo]
                            [--preset preview] [--size 320] [--photo-from front] [--save DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ENTRIES = ("oracle", "keypoints", "landmarks", "photo")
SETS = ("consistent", "hard")
NEW_POSES = (("walk", 8), ("wave", 20))  # bundled clip, frame: mid-stride; the arm up
N_VIEWS = 8
BACK_ANGLE = 180
TARGETS = {
    # issue 14's bar, preview preset, photo entry, consistent set, photos from the front
    "novel_psnr_inter_mean": 21.0, "back_psnr_inter": 19.0, "novel_iou_mean": 0.88, "novel_iou_min": 0.80,
    "pose_psnr_inter": 21.0, "pose_iou": 0.85, "input_psnr": 25.0, "oracle_gap_to_ceiling_max_db": 3.0,
    # issue 15's bar, photo entry, every subject (from the front or from behind)
    "pa_mpjpe_mm": 15.0, "finger_pa_mpjpe_mm": 15.0, "facing_right_share": 1.0,
}  # fmt: skip
#: Targets met at or below their value (the rest at or above).
AT_MOST = ("oracle_gap_to_ceiling_max_db", "pa_mpjpe_mm", "finger_pa_mpjpe_mm")


def umeyama(src, dst):
    """Similarity (s, R, t) minimising ||dst - (s R src + t)||^2 over [N, 3] point pairs."""
    from avatar_ops.body.alignment import similarity_transform

    return similarity_transform(src, dst)


def body_joints(body, out):
    """[B, 22, 3] the SMPL-X body joints (pelvis .. wrists) of an Anny forward pass: the head of
    the first bone each joint drives."""
    import torch

    index = []
    for j in range(22):
        bones = torch.nonzero(body.bone_to_joint == j)[:, 0]
        index.append(int(bones[0]))
    return out.joints[:, index]


def hand_joints(body, out):
    """[B, 2, 16, 3] each hand's SMPL-X joints (wrist, then the 15 finger joints; left, right) of a
    forward pass: the head of the first bone each joint drives."""
    from avatar_ops.tracking.hands import HAND_POSE_JOINTS

    bones = body.smplx_joint_bones()
    return out.joints[:, [[bones[j] for j in HAND_POSE_JOINTS[side]] for side in ("left", "right")]]


def finger_pa_mpjpe(fit, truth) -> float:
    """Mean error (metres) of the 30 finger joints, each hand aligned on its own by a similarity
    over its 16 joints; ``fit`` and ``truth`` are [2, 16, 3]."""
    errors = []
    for h in range(2):
        s, r, t = umeyama(fit[h], truth[h])
        errors.append((fit[h, 1:] @ r.T * s + t - truth[h, 1:]).norm(dim=1))
    return float(sum(e.mean() for e in errors) / 2)


def aligned_gaussians(g, scale, rot, transl):
    """The posed Gaussians ``g`` (from ``GaussianAvatar.posed``, batch 1) moved by a similarity."""
    from avatar_ops.body.rotations import matrix_to_quaternion, quaternion_to_matrix

    means = g["means"][0] @ rot.T * scale + transl
    quats = matrix_to_quaternion(rot[None] @ quaternion_to_matrix(g["quats"][0]))
    return {"means": means, "quats": quats, "scales": g["scales"] * scale, "opacities": g["opacities"], "colors": g["colors"]}


def render_gaussians(g, cameras):
    from avatar_ops.avatar.model import RASTERIZE_MODE
    from avatar_ops.render.gaussians import rasterize

    return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], cameras, rasterize_mode=RASTERIZE_MODE)


def figures(pred_rgb, pred_alpha, truth_rgb, truth_mask) -> dict:
    """Per-view figures of one render against its truth ([H, W, 3], [H, W] each)."""
    import numpy as np
    from skimage.metrics import structural_similarity

    from avatar_ops.avatar.fit import psnr

    pm = pred_alpha > 0.5
    tm = truth_mask
    inter, union = pm & tm, pm | tm
    pred = pred_rgb.clamp(0, 1)
    out = {
        "psnr_inter": round(psnr(pred, truth_rgb, inter.float()), 2) if inter.any() else 0.0,
        "psnr_union": round(psnr(pred, truth_rgb, union.float()), 2) if union.any() else 0.0,
        "iou": round(float(inter.sum() / union.sum().clamp(min=1)), 4),
    }
    ys, xs = np.nonzero(union.numpy())
    if len(ys):
        pad = 4
        y0, y1 = max(0, ys.min() - pad), min(union.shape[0], ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(union.shape[1], xs.max() + pad + 1)
        a, b = pred[y0:y1, x0:x1].double().numpy(), truth_rgb[y0:y1, x0:x1].double().numpy()
        if min(a.shape[:2]) >= 11:
            out["ssim"] = round(float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)), 4)
    return out


def mean_figures(rows: list[dict]) -> dict:
    import numpy as np

    keys = sorted({k for r in rows for k in r if isinstance(r[k], (int, float))})
    return {k: round(float(np.mean([r[k] for r in rows if k in r])), 4) for k in keys}


def ceiling_avatar(body, texture, shape, pose_c, transl_c, intrinsics, width, height, reconstruct_config):
    """The true textured surface as the same number of Gaussians, laid out as reconstruction lays
    them out, each with the true texture averaged over its own patch of surface (the surface
    sampled 16 times as densely, each sample given to its nearest Gaussian)."""
    import torch
    from scipy.spatial import cKDTree

    from avatar_ops.avatar.reconstruct import initial_layout, sample_surface
    from avatar_ops.body.parts import body_parts

    cfg = reconstruct_config
    with torch.no_grad():
        posed = body(shape, pose_c, transl_c).vertices[0]
    layout = initial_layout(posed, body.faces, cfg.num_gaussians, cfg.seed, cfg.size_factor, cfg.thickness)

    def colour_at(face, bary):
        corners = body.faces[face]
        pos = (bary[:, :, None] * texture.rest[corners]).sum(1)
        nrm = (bary[:, :, None] * texture.normals[corners]).sum(1)
        return texture(pos, nrm, texture.face_parts[face])

    centres = (layout.bary[:, :, None] * posed[body.faces[layout.face]]).sum(1)
    face, bary = sample_surface(posed, body.faces, 16 * len(layout.face), cfg.seed + 1)
    dense = (bary[:, :, None] * posed[body.faces[face]]).sum(1)
    _, nearest = cKDTree(centres.numpy()).query(dense.numpy())
    nearest = torch.from_numpy(nearest)
    count = torch.bincount(nearest, minlength=len(centres))
    total = torch.zeros(len(centres), 3).index_add_(0, nearest, colour_at(face, bary))
    colour = torch.where((count > 0)[:, None], total / count.clamp(min=1)[:, None], colour_at(layout.face, layout.bary))
    inward = -cfg.inward * layout.log_scale[:, 0].exp()
    avatar = layout.avatar(body.name, shape[0], colour, pose_c[0], transl_c[0], intrinsics, width, height, cfg.initial_opacity, inward)
    part = body_parts(body).of_faces(body.faces).part[layout.face]
    cfg.limits.project(part, avatar.offset, avatar.rotation, avatar.log_scale, avatar.opacity_logit)
    return avatar


def _sheet(rows_of_images, tile: int):
    """Rows of [H, W, 3] float images -> one uint8 sheet, tiles ``tile`` px."""
    import numpy as np
    import torch

    lines = []
    for row in rows_of_images:
        tiles = [torch.nn.functional.interpolate(img.permute(2, 0, 1)[None].clamp(0, 1), size=(tile, tile), mode="area")[0].permute(1, 2, 0) for img in row]
        lines.append(torch.cat(tiles, 1))
    return (torch.cat(lines, 0).numpy() * 255).round().astype(np.uint8)


class Bench:
    def __init__(self, args) -> None:
        import torch

        from avatar_ops.pipeline import AvatarPipeline
        from avatar_ops.render.camera import orbit_cameras
        from avatar_ops.stages.config import PipelineConfig

        self.args = args
        self.pipeline = AvatarPipeline(PipelineConfig(preset=args.preset))
        self.body = self.pipeline.body
        self.focal_factor = self.pipeline.config.tracking.fit.focal_factor
        # Every camera has the focal length the tracker assumes (as if the photo's EXIF said so).
        self.fov_deg = math.degrees(2 * math.atan(0.5 / self.focal_factor))
        start = 0.0 if args.photo_from == "front" else 180.0
        self.orbit = lambda target, size: orbit_cameras(N_VIEWS, target, args.distance, 0.0, size, fov_deg=self.fov_deg, start_deg=start)
        self.torch = torch

    def subject(self, subject) -> dict:
        """Every entry's figures (and sheets) for one subject, plus the ceiling."""
        import numpy as np
        import torch
        from subjects import Texture, posed_in_camera, render_truth

        from avatar_ops.body.base import KEYPOINT_NAMES
        from avatar_ops.io.image import decode_image
        from avatar_ops.motion import load_motion
        from avatar_ops.render.camera import Cameras, project
        from avatar_ops.tracking.facing import facing_angle_deg, facing_of

        args, body = self.args, self.body
        texture = Texture(body, subject)
        with torch.no_grad():
            world = body(subject.shape, subject.pose)
        cams = self.orbit(world.joints[0, 0], args.size)
        photo_cams = self.orbit(world.joints[0, 0], args.photo_size)
        view0 = cams.viewmats[0]
        truth, truth_masks = render_truth(body, texture, subject.shape, subject.pose, cams)
        photo, photo_mask = render_truth(body, texture, subject.shape, subject.pose, photo_cams[:1])
        pose_c, transl_c = posed_in_camera(body, subject.shape, subject.pose, view0)
        k_photo = photo_cams.Ks[0]
        with torch.no_grad():
            true_c = body(subject.shape, pose_c, transl_c)
        true_joints_c = body_joints(body, true_c)[0]
        true_hands_c = hand_joints(body, true_c)[0]
        # Cameras in the photo camera's frame (where the avatar lives).
        rel = Cameras(cams.viewmats @ torch.linalg.inv(view0), cams.Ks, cams.width, cams.height)

        poses = {}
        for clip, frame in NEW_POSES:
            motion = load_motion(clip)
            p = motion.pose[frame : frame + 1].clone()
            with torch.no_grad():
                out = body(subject.shape, p)
            pcams = self.orbit(out.joints[0, 0], args.size)
            images, masks = render_truth(body, texture, subject.shape, p, pcams)
            poses[clip] = {"pose": p, "cams": pcams, "truth": images, "masks": masks, "joints": body_joints(body, out)[0]}

        rgb = (photo[0].numpy() * 255).round().astype(np.uint8)
        alpha = photo_mask[0].numpy().astype(np.uint8) * 255
        png = io.BytesIO()
        from PIL import Image

        Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA").save(png, format="PNG")
        decoded = decode_image(png.getvalue(), self.pipeline.config.decode)
        kp3 = true_c.keypoints[0]
        kp2 = project(kp3[None], k_photo[None])[0]
        keypoints = torch.cat([kp2, torch.ones(len(kp2), 1)], 1).numpy().astype(np.float32)
        hips = [KEYPOINT_NAMES.index("left_hip"), KEYPOINT_NAMES.index("right_hip")]
        landmarks = torch.cat([kp3 - kp3[hips].mean(0), torch.ones(len(kp3), 1)], 1).numpy().astype(np.float32)

        report = {"subject": subject.name, "back": subject.back, "photo_from": args.photo_from, "entries": {}}
        sheets = {}
        # The representation ceiling.
        ceiling = ceiling_avatar(body, texture, subject.shape, pose_c, transl_c, k_photo, args.photo_size, args.photo_size, self.pipeline.stages["reconstruct"].operator().config)
        report["ceiling"] = self._evaluate(ceiling, None, truth, truth_masks, rel, poses, cams, view0, truth_input=(truth[0], truth_masks[0]))[0]
        for entry in args.entries:
            t0 = time.perf_counter()
            avatar = self._build(entry, decoded, keypoints, landmarks, subject, pose_c, transl_c, k_photo, photo_mask[0])
            seconds = time.perf_counter() - t0
            if isinstance(avatar, str):
                report["entries"][entry] = {"status": "rejected", "reason": avatar}
                continue
            with torch.no_grad():
                fit_c = body(avatar.shape[None], avatar.source_pose[None], avatar.source_transl[None])
            fit_joints = body_joints(body, fit_c)[0]
            s, r, t = umeyama(fit_joints, true_joints_c)
            pa = (fit_joints @ r.T * s + t - true_joints_c).norm(dim=1).mean()
            pve = (fit_c.vertices[0] @ r.T * s + t - true_c.vertices[0]).norm(dim=1).mean()
            fingers = finger_pa_mpjpe(hand_joints(body, fit_c)[0], true_hands_c)
            figs, images = self._evaluate(avatar, (s, r, t), truth, truth_masks, rel, poses, cams, view0, truth_input=(truth[0], truth_masks[0]))
            angle = facing_angle_deg(avatar.source_pose[0].cpu().numpy(), avatar.source_transl.cpu().numpy())
            figs.update({
                "status": "ok", "seconds": round(seconds, 1), "pa_mpjpe_mm": round(float(pa) * 1000, 1), "pve_mm": round(float(pve) * 1000, 1),
                "finger_pa_mpjpe_mm": round(fingers * 1000, 1), "fingers_bent": subject.fingers_bent,
                "scale": round(float(s), 3), "facing": facing_of(angle), "facing_angle_deg": round(angle, 1),
            })  # fmt: skip
            report["entries"][entry] = figs
            sheets[entry] = images
        return report, sheets, truth, poses

    def _build(self, entry, decoded, keypoints, landmarks, subject, pose_c, transl_c, k_photo, mask):
        """The fitted avatar of one entry point, or the reason it was rejected."""
        import numpy as np

        from avatar_ops.stages.payload import Payload
        from avatar_ops.tracking.operator import TrackInput, TrackResult
        from avatar_ops.types import Rejected

        payload = Payload(f"bench:{subject.name}", image=decoded, keypoints=[keypoints] if entry == "keypoints" else None)
        if entry == "landmarks":  # the stage takes 2D keypoints only: the tracker is called here
            track = self.pipeline.stages["track"].operator()([TrackInput(decoded, [keypoints], world_keypoints=[landmarks])])[0]
            if isinstance(track, Rejected):
                return f"rejected: {track.reason}: {track.detail}"
            payload.track = track
        if entry == "oracle":
            track = TrackResult(
                body_model=self.body.name, shape=subject.shape[0].numpy(), pose=pose_c[0].numpy(), transl=transl_c[0].numpy(),
                intrinsics=k_photo.numpy().astype(np.float32), width=decoded.width, height=decoded.height, keypoints=keypoints,
                projected_keypoints=keypoints[:, :2], mask=mask.numpy(), num_people=1, quality={},
            )  # fmt: skip
            payload.track = track
        self.pipeline.run_payload(payload, stop_after="fit", start="reconstruct" if entry in ("oracle", "landmarks") else "track")
        return payload.avatar if payload.pending else f"{payload.status}: {payload.reason}: {payload.detail}"

    def _evaluate(self, avatar, alignment, truth, truth_masks, rel, poses, cams, view0, truth_input):
        """Figures of an avatar (aligned by ``alignment``; None: as it is) in every view and pose."""
        import torch

        body, args = self.body, self.args
        with torch.no_grad():
            g = avatar.posed(body, avatar.source_pose[None], avatar.source_transl[None])
            if alignment is not None:
                g = aligned_gaussians(g, *alignment)
            else:
                g = {**g, "means": g["means"][0], "quats": g["quats"][0]}
            orbit = render_gaussians(g, rel)
            # The input view: the avatar as fitted, in the photo's camera (no alignment).
            src = avatar.source_camera(args.size / args.photo_size)
            raw = avatar.render(body, avatar.source_pose[None], avatar.source_transl[None], src)
        per_view = []
        for c in range(N_VIEWS):
            per_view.append({"angle_deg": round(360 * c / N_VIEWS), **figures(orbit.rgb[c], orbit.alpha[c, ..., 0], truth[c], truth_masks[c])})
        out = {"per_view": per_view, "input_view": figures(raw.rgb[0], raw.alpha[0, ..., 0], *truth_input)}
        novel = [v for v in per_view if v["angle_deg"] != 0]
        out["novel_mean"] = mean_figures(novel)
        images = {"orbit": orbit.rgb}
        out["poses"] = {}
        for clip, data in poses.items():
            with torch.no_grad():
                pose = data["pose"].clone()
                pose[:, 25:] = avatar.source_pose[25:]  # hands as the photo has them (animate does the same)
                fitted = body(avatar.shape[None], pose)
                gp = avatar.posed(body, pose)
                if alignment is not None:
                    s, r, t = umeyama(body_joints(body, fitted)[0], data["joints"])
                    gp = aligned_gaussians(gp, s, r, t)
                else:
                    gp = {**gp, "means": gp["means"][0], "quats": gp["quats"][0]}
                render = render_gaussians(gp, data["cams"])
            views = [figures(render.rgb[c], render.alpha[c, ..., 0], data["truth"][c], data["masks"][c]) for c in range(N_VIEWS)]
            out["poses"][clip] = {"mean": mean_figures(views), "per_view": [{"angle_deg": round(360 * c / N_VIEWS), **v} for c, v in enumerate(views)]}
            images[clip] = render.rgb
        return out, images


def summarise(reports: list[dict], entry: str, photo_from: str = "front") -> dict:
    """Mean figures over subjects of one entry (or ``ceiling``); ``photo_from``: the side every
    photo was taken from (the facing the tracker should find)."""
    ok = [r["ceiling"] if entry == "ceiling" else r["entries"][entry] for r in reports]
    ok = [r for r in ok if r.get("status", "ok") == "ok"]
    if not ok:
        return {"subjects_ok": 0}
    per_view = [mean_figures([r["per_view"][c] for r in ok]) for c in range(N_VIEWS)]
    out = {
        "subjects_ok": len(ok), "subjects": len(reports),
        "per_view": per_view,
        "novel_mean": mean_figures([r["novel_mean"] for r in ok]),
        "novel_iou_min": round(min(v["iou"] for v in per_view[1:]), 4),
        "back": per_view[N_VIEWS // 2],
        "input_view": mean_figures([r["input_view"] for r in ok]),
        "poses": {clip: mean_figures([r["poses"][clip]["mean"] for r in ok]) for clip in ok[0]["poses"]},
    }  # fmt: skip
    if entry != "ceiling":
        for key in ("pa_mpjpe_mm", "pve_mm", "finger_pa_mpjpe_mm", "seconds"):
            out[key] = round(sum(r[key] for r in ok) / len(ok), 1)
        bent = [r["finger_pa_mpjpe_mm"] for r in ok if r["fingers_bent"]]
        out["finger_pa_mpjpe_mm_bent"] = round(sum(bent) / len(bent), 1) if bent else None
        out["facing_right"] = sum(r["facing"] == photo_from for r in ok)
    return out


def main() -> None:
    from avatar_ops.types import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=6, help="subjects per set (default: 6; the bar asks for at least 4)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS, help="subject sets (default: both)")
    parser.add_argument("--entries", nargs="+", default=list(ENTRIES), choices=ENTRIES, help="entry points (default: all four)")
    parser.add_argument("--preset", default="preview", choices=PRESETS, help="quality preset (default: preview)")
    parser.add_argument("--size", type=int, default=None, help="side of the evaluation renders in pixels (default: the preset's supervision resolution, 256 for preview)")
    parser.add_argument("--photo-size", type=int, default=512, help="side of the input photo in pixels (default: 512)")
    parser.add_argument("--distance", type=float, default=3.0, help="camera distance in metres (default: 3.0)")
    parser.add_argument("--only", nargs="+", type=int, default=None, help="evaluate only these subject indices")
    parser.add_argument("--photo-from", choices=("front", "back"), default="front", help="which side of the subject the photo is taken from (default: front; back: the person seen from behind)")
    parser.add_argument("--save", type=Path, default=None, help="write PNG sheets (truth rows over prediction rows) into this folder")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image
    from subjects import make_subjects

    if args.size is None:
        from avatar_ops.avatar.fit import PRESET_SETTINGS

        args.size = PRESET_SETTINGS[args.preset]["resolution"]
    bench = Bench(args)
    t_start = time.perf_counter()
    result = {"preset": args.preset, "size": args.size, "photo_size": args.photo_size, "fov_deg": round(bench.fov_deg, 2), "sets": {}}
    for set_name in args.sets:
        subjects = make_subjects(bench.body, args.subjects, set_name)
        if args.only is not None:
            subjects = [s for i, s in enumerate(subjects) if i in args.only]
        reports, overview = [], {e: [] for e in args.entries}
        for subject in subjects:
            report, sheets, truth, poses = bench.subject(subject)
            reports.append(report)
            print(json.dumps({"set": set_name, "subject": subject.name, **{e: {k: report["entries"][e].get(k) for k in ("novel_mean", "input_view", "pa_mpjpe_mm")} for e in report["entries"]}}), file=sys.stderr)
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                for entry, images in sheets.items():
                    rows = [list(truth), list(images["orbit"])]
                    for clip in poses:
                        rows += [list(poses[clip]["truth"]), list(images[clip])]
                    Image.fromarray(_sheet(rows, 160)).save(args.save / f"{set_name}_{subject.name}_{entry}.png")
                    overview[entry] += [list(truth), list(images["orbit"])]
        if args.save:
            for entry, rows in overview.items():
                if rows:
                    Image.fromarray(_sheet(rows, 112)).save(args.save / f"{set_name}_{entry}_overview.png")
        summary = {"ceiling": summarise(reports, "ceiling"), **{e: summarise(reports, e, args.photo_from) for e in args.entries}}
        if "oracle" in args.entries and summary["oracle"].get("subjects_ok"):
            gaps = [c["psnr_inter"] - o["psnr_inter"] for c, o in zip(summary["ceiling"]["per_view"], summary["oracle"]["per_view"])]
            summary["oracle_gap_to_ceiling_db"] = {"per_view": [round(g, 2) for g in gaps], "max": round(max(gaps), 2)}
        result["sets"][set_name] = {"summary": summary, "per_subject": reports}
    consistent = result["sets"].get("consistent", {}).get("summary", {})
    photo = consistent.get("photo", {})
    measured = {}
    if photo.get("subjects_ok") and args.photo_from == "front":
        measured.update({
            "novel_psnr_inter_mean": photo["novel_mean"]["psnr_inter"], "back_psnr_inter": photo["back"]["psnr_inter"],
            "novel_iou_mean": photo["novel_mean"]["iou"], "novel_iou_min": photo["novel_iou_min"],
            "pose_psnr_inter": min(p["psnr_inter"] for p in photo["poses"].values()), "pose_iou": min(p["iou"] for p in photo["poses"].values()),
            "input_psnr": photo["input_view"]["psnr_inter"],
        })  # fmt: skip
        if "oracle_gap_to_ceiling_db" in consistent:
            measured["oracle_gap_to_ceiling_max_db"] = consistent["oracle_gap_to_ceiling_db"]["max"]
    tracked = [r["entries"]["photo"] for data in result["sets"].values() for r in data["per_subject"] if r["entries"].get("photo", {}).get("status") == "ok"]
    if tracked:
        measured["pa_mpjpe_mm"] = round(sum(r["pa_mpjpe_mm"] for r in tracked) / len(tracked), 1)
        measured["finger_pa_mpjpe_mm"] = round(sum(r["finger_pa_mpjpe_mm"] for r in tracked) / len(tracked), 1)
        measured["facing_right_share"] = round(sum(r["facing"] == args.photo_from for r in tracked) / len(tracked), 3)
    if measured:
        result["targets"] = {
            k: {"measured": v, "target": TARGETS[k], "met": bool(v <= TARGETS[k] if k in AT_MOST else v >= TARGETS[k])} for k, v in measured.items()
        }
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result, indent=1))
    del np


if __name__ == "__main__":
    main()
