"""Ground-truth quality benchmark. Prints JSON.

Textured Anny bodies (varied shape, pose and clothing palette) are rendered from 8 cameras on a
circle with a z-buffered mesh rasteriser. The front view goes through the pipeline (tracking with
the ground-truth 2D keypoints and the render's alpha as mask, reconstruction, fitting); the fitted
avatar is rendered from the other 7 cameras and compared with the ground truth: PSNR over the
person (union of both masks), SSIM over the frame, silhouette IoU, per view angle.

Textures are solid procedural patterns on the rest-pose body, different front and back so that
colours guessed for unseen sides show: skin, hair (top and back of the head), a shirt with
horizontal stripes on the front and vertical stripes on the back, checked trousers, dark shoes.

    python bench/quality.py [--subjects 3] [--preset preview] [--size 320]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SKIN, HAIR, SHIRT_FRONT, SHIRT_BACK, TROUSERS, SHOES = range(6)


def part_labels(body, rest):
    """Per-vertex part from the dominant bone and the rest-pose position."""
    import torch

    names = body.joint_names
    bone = body.skinning_weights.argmax(1)
    label = torch.full((len(rest),), SKIN, dtype=torch.long)
    kind = []
    for n in names:
        base = n.split(".")[0]
        if base.startswith(("spine", "clavicle", "shoulder", "upperarm", "breast")):
            kind.append(SHIRT_FRONT)
        elif base.startswith(("pelvis", "upperleg", "lowerleg", "root")):
            kind.append(TROUSERS)
        elif base.startswith(("foot", "toe")):
            kind.append(SHOES)
        else:
            kind.append(SKIN)
    label = torch.tensor(kind)[bone]
    torso = label == SHIRT_FRONT
    centre_z = rest[torso, 2].mean()
    label[torso & (rest[:, 2] < centre_z)] = SHIRT_BACK
    head = torch.tensor([n.split(".")[0].startswith(("head", "neck03", "eye", "jaw", "tongue", "teeth")) for n in names])[bone]
    top = rest[head, 1].max()
    head_centre_z = rest[head, 2].mean()
    hair = head & ((rest[:, 1] > top - 0.07) | ((rest[:, 2] < head_centre_z - 0.01) & (rest[:, 1] > top - 0.2)))
    label[hair] = HAIR
    return label


def shade(label, pos, palette):
    """[H, W] part labels and [H, W, 3] rest positions -> [H, W, 3] colours."""
    import torch

    out = torch.zeros(pos.shape)
    y, x = pos[..., 1], pos[..., 0]
    stripes_h = ((y / palette["stripe"]).floor() % 2)[..., None]
    stripes_v = ((x / palette["stripe"]).floor() % 2)[..., None]
    checks = (((x / palette["check"]).floor() + (y / palette["check"]).floor()) % 2)[..., None]
    colours = {
        SKIN: palette["skin"].expand_as(out),
        HAIR: palette["hair"].expand_as(out),
        SHIRT_FRONT: stripes_h * palette["shirt_a"] + (1 - stripes_h) * palette["shirt_b"],
        SHIRT_BACK: stripes_v * palette["back_a"] + (1 - stripes_v) * palette["back_b"],
        TROUSERS: checks * palette["trousers_a"] + (1 - checks) * palette["trousers_b"],
        SHOES: palette["shoes"].expand_as(out),
    }
    for part, colour in colours.items():
        out = torch.where((label == part)[..., None], colour, out)
    return out


def make_subject(body, index: int):
    import torch

    from avatar_ops.body.base import SMPLX_JOINT_NAMES

    g = torch.Generator().manual_seed(100 + index)
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    shape = 0.25 + 0.5 * rand(1, body.num_shape_params)
    pose = torch.zeros(1, 55, 3)
    j = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    pose[0, j["left_shoulder"], 2] = -(0.9 + 0.4 * rand(1))
    pose[0, j["right_shoulder"], 2] = 0.9 + 0.4 * rand(1)
    pose[0, j["left_elbow"], 1] = -0.4 * rand(1)
    pose[0, j["right_elbow"], 1] = 0.4 * rand(1)
    pose[0, j["left_hip"], 2] = 0.1 * rand(1)
    pose[0, j["right_hip"], 2] = -0.1 * rand(1)
    c = lambda: rand(3) * 0.8 + 0.1  # noqa: E731
    palette = {
        "skin": torch.tensor([0.85, 0.65, 0.52]) * (0.6 + 0.4 * rand(1)), "hair": c() * 0.4,
        "shirt_a": c(), "shirt_b": c(), "back_a": c(), "back_b": c(), "trousers_a": c() * 0.6, "trousers_b": c() * 0.6,
        "shoes": c() * 0.2, "stripe": 0.04 + 0.04 * float(rand(1)), "check": 0.05 + 0.04 * float(rand(1)),
    }  # fmt: skip
    return shape, pose, palette


def render_truth(body, shape, pose, palette, cameras):
    """Ground-truth RGB [C, H, W, 3] and masks [C, H, W] (black background)."""
    import torch

    from avatar_ops.render.mesh import rasterize_mesh

    with torch.no_grad():
        posed = body(shape, pose).vertices[0]
        rest = body(shape, torch.zeros_like(pose)).vertices[0]
    labels = part_labels(body, rest)
    face_label = labels[body.faces].mode(1).values
    images, masks = [], []
    for c in range(len(cameras)):
        view = cameras.viewmats[c]
        cam_vertices = posed @ view[:3, :3].T + view[:3, 3]
        frags = rasterize_mesh(cam_vertices, body.faces, cameras.Ks[c], cameras.width, cameras.height)
        pos = frags.interpolate(rest, body.faces)
        label = torch.where(frags.mask, face_label[frags.face.clamp(min=0)], torch.full_like(frags.face, -1))
        images.append(torch.where(frags.mask[..., None], shade(label, pos, palette), torch.zeros(3)))
        masks.append(frags.mask)
    return torch.stack(images), torch.stack(masks), posed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=3, help="textured bodies to test (default: 3)")
    parser.add_argument("--preset", default="preview", choices=["preview", "standard", "high"], help="fitting preset (default: preview)")
    parser.add_argument("--size", type=int, default=320, help="render size in pixels (default: 320)")
    parser.add_argument("--save", type=Path, default=None, help="write a PNG per subject (ground truth over prediction) into this folder")
    args = parser.parse_args()

    import numpy as np
    import torch

    from avatar_ops.avatar.fit import PRESETS, FitConfig, FittingOperator, _ssim, psnr
    from avatar_ops.avatar.model import orbit_cameras
    from avatar_ops.avatar.reconstruct import ReconstructConfig, ReconstructionOperator
    from avatar_ops.body import BodyModelConfig, build_body_model
    from avatar_ops.io.image import DecodedImage
    from avatar_ops.render.gaussians import Cameras
    from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator, TrackInput
    from avatar_ops.tracking.smplify import project

    from avatar_ops.tracking.smplify import FitConfig as BodyFitConfig

    body = build_body_model(BodyModelConfig(kind="anny"))
    fov_deg = 40.0
    # The photo's focal length is known here, as with EXIF; the tracker is told it.
    focal_factor = 0.5 / math.tan(math.radians(fov_deg) / 2)
    tracker = TrackingOperator(TrackingConfig(device="cpu", fit=BodyFitConfig(focal_factor=focal_factor)), body, detector=None)
    reconstructor = ReconstructionOperator(ReconstructConfig(num_gaussians=PRESETS[args.preset]["num_gaussians"]), body)
    fitter = FittingOperator(FitConfig(preset=args.preset), body)
    per_view: dict[int, list[dict]] = {}
    subjects = []
    t_start = time.perf_counter()
    for s in range(args.subjects):
        shape, pose, palette = make_subject(body, s)
        with torch.no_grad():
            pelvis = body(shape, pose).joints[0, 0]
        cams = orbit_cameras(8, pelvis, 3.0, 0.0, args.size, fov_deg=fov_deg)
        truth, masks, posed = render_truth(body, shape, pose, palette, cams)
        # The front view is the photo; the ground-truth keypoints and the alpha go with it.
        view0 = cams.viewmats[0]
        with torch.no_grad():
            kp3 = body(shape, pose).keypoints[0] @ view0[:3, :3].T + view0[:3, 3]
        kp2 = project(kp3[None], cams.Ks[:1])[0]
        keypoints = torch.cat([kp2, torch.ones(len(kp2), 1)], 1).numpy().astype(np.float32)
        rgb = (truth[0].numpy() * 255).round().astype(np.uint8)
        alpha = masks[0].numpy().astype(np.uint8) * 255
        track = tracker([TrackInput(DecodedImage(rgb=rgb, alpha=alpha, format="PNG", mode="RGBA"), [keypoints])])[0]
        if not hasattr(track, "pose"):
            subjects.append({"subject": s, "status": "rejected", "reason": str(track)})
            continue
        rec = reconstructor([(track, rgb)])[0]
        t0 = time.perf_counter()
        fitted = fitter([(rec, rgb, [])])[0]
        fit_s = time.perf_counter() - t0
        avatar = fitted.avatar
        # Camera i in the photo camera's frame (the avatar lives there).
        rel = cams.viewmats @ torch.linalg.inv(view0)
        rel_cams = Cameras(rel, cams.Ks, cams.width, cams.height)
        # One photo cannot tell a larger body further away from a smaller one nearer: besides the
        # raw figures, report them after scaling the avatar about the photo's camera centre so its
        # pelvis lies at the true depth (the input view's image is unchanged by this).
        from avatar_ops.render.gaussians import rasterize

        with torch.no_grad():
            fitted_pelvis = body(avatar.shape[None], avatar.source_pose[None], avatar.source_transl[None]).joints[0, 0]
            true_pelvis = pelvis @ view0[:3, :3].T + view0[:3, 3]
            scale = float(true_pelvis[2] / fitted_pelvis[2])
            pred = avatar.render(body, avatar.source_pose[None], avatar.source_transl[None], rel_cams)
            g = avatar.posed(body, avatar.source_pose[None], avatar.source_transl[None])
            aligned = rasterize(g["means"][0] * scale, g["quats"][0], g["scales"] * scale, g["opacities"], g["colors"], rel_cams)
        rows = []
        for c in range(8):
            angle = round(360 * c / 8)
            pm = pred.alpha[c, ..., 0] > 0.5
            union = (pm | masks[c]).float()
            entry = {
                "angle_deg": angle,
                "psnr_person": round(psnr(pred.rgb[c].clamp(0, 1), truth[c], union), 2),
                "ssim": round(float(_ssim(pred.rgb[c].clamp(0, 1).permute(2, 0, 1)[None], truth[c].permute(2, 0, 1)[None])), 4),
                "silhouette_iou": round(float((pm & masks[c]).sum() / union.sum().clamp(min=1)), 3),
            }
            am = aligned.alpha[c, ..., 0] > 0.5
            aunion = (am | masks[c]).float()
            entry["aligned_psnr_person"] = round(psnr(aligned.rgb[c].clamp(0, 1), truth[c], aunion), 2)
            entry["aligned_ssim"] = round(float(_ssim(aligned.rgb[c].clamp(0, 1).permute(2, 0, 1)[None], truth[c].permute(2, 0, 1)[None])), 4)
            entry["aligned_silhouette_iou"] = round(float((am & masks[c]).sum() / aunion.sum().clamp(min=1)), 3)
            rows.append(entry)
            per_view.setdefault(angle, []).append(entry)
        subjects.append({"subject": s, "status": "ok", "fit_s": round(fit_s, 1), "depth_scale": round(scale, 3), "views": rows})
        if args.save:
            from PIL import Image

            args.save.mkdir(parents=True, exist_ok=True)
            top = np.concatenate(list(truth.numpy()), 1)
            bottom = np.concatenate(list(aligned.rgb.clamp(0, 1).numpy()), 1)
            Image.fromarray((np.concatenate([top, bottom], 0) * 255).astype(np.uint8)).save(args.save / f"subject_{s}.png")
    summary = []
    for angle in sorted(per_view):
        rows = per_view[angle]
        summary.append({
            "angle_deg": angle, "input_view": angle == 0,
            "psnr_person": round(float(np.mean([r["psnr_person"] for r in rows])), 2),
            "ssim": round(float(np.mean([r["ssim"] for r in rows])), 4),
            "silhouette_iou": round(float(np.mean([r["silhouette_iou"] for r in rows])), 3),
            **{k: round(float(np.mean([r[k] for r in rows])), 3) for k in ("aligned_psnr_person", "aligned_ssim", "aligned_silhouette_iou")},
        })  # fmt: skip
    novel = [r for r in summary if not r["input_view"]]
    report = {
        "preset": args.preset, "size": args.size, "subjects": len(subjects),
        "per_view": summary,
        "novel_views_mean": {k: round(float(np.mean([r[k] for r in novel])), 3) for k in ("psnr_person", "ssim", "silhouette_iou", "aligned_psnr_person", "aligned_ssim", "aligned_silhouette_iou")} if novel else {},
        "per_subject": subjects, "wall_s": round(time.perf_counter() - t_start, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
