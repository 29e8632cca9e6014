"""The ``avatar-forge`` command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from avatar_ops.types import PRESETS, SYNTHESIS_KINDS, SYNTHESIS_MODES

EPILOG = """examples:
  avatar-forge track samples/*.jpg samples/*.png -o out/track
  avatar-forge track photo.jpg --keypoints photo_openpose.json -o out/track
  avatar-forge track photo.jpg --body smplx --smplx-path /models/smplx -o out/track
  avatar-forge generate samples/man_hoodie_masked.png -o out/avatars --preset preview
  avatar-forge generate photo.jpg --synthesis-model /models/svd-img2vid --synthesis-mode both
  avatar-forge synthesize photo.jpg --synthesis-model s3://models/svd-img2vid -o out/synthesis
  avatar-forge animate out/avatars/man_hoodie_masked --motion wave -o out/wave.gif

Body models: `anny` (default) ships in its wheel and runs offline; its first build takes about a
minute and is cached under $ANNY_CACHE_DIR. `smplx` needs licensed SMPL-X files (a .npz or a folder
of SMPLX_<GENDER>.npz) at a local path or fsspec URI.
"""


def _command(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=description, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_body_args(p: argparse.ArgumentParser, choose_body: bool = True) -> None:
    """--body (when the command chooses it), --smplx-path, --gender, --device."""
    if choose_body:
        p.add_argument("--body", choices=["anny", "smplx"], default="anny", help="parametric body model (default: anny)")
    p.add_argument("--smplx-path", help="SMPL-X .npz file or folder (path or s3://...), required with an SMPL-X body")
    p.add_argument("--gender", choices=["neutral", "male", "female"], default="neutral", help="SMPL-X gender (default: neutral)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")


def _tracking_config(args: argparse.Namespace):
    from avatar_ops.body import BodyModelConfig
    from avatar_ops.tracking.operator import TrackingConfig

    if args.body == "smplx" and not args.smplx_path:
        raise SystemExit("error: --smplx-path is required with --body smplx")
    return TrackingConfig(body=BodyModelConfig(kind=args.body, smplx_path=args.smplx_path, gender=args.gender), device=args.device)


def cmd_track(args: argparse.Namespace) -> int:
    import torch

    from avatar_ops.io.image import DecodeConfig, load_image
    from avatar_ops.io.storage import write_bytes
    from avatar_ops.render.camera import project
    from avatar_ops.tracking.keypoints import parse_keypoints_json
    from avatar_ops.tracking.operator import TrackingOperator, TrackInput
    from avatar_ops.tracking.overlay import draw_overlay
    from avatar_ops.types import Rejected

    if args.keypoints and len(args.keypoints) != len(args.photos):
        raise SystemExit(f"error: --keypoints was given {len(args.keypoints)} times for {len(args.photos)} photos; give it once per photo or not at all")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    operator = TrackingOperator.from_config(_tracking_config(args))
    decode = DecodeConfig()
    failures = 0
    for start in range(0, len(args.photos), args.batch_size):
        chunk = args.photos[start : start + args.batch_size]
        items, names, outcomes = [], [], {}
        for offset, photo in enumerate(chunk):
            try:
                decoded = load_image(photo, decode)
            except FileNotFoundError:
                print(f"{photo}: FAILED file not found")
                failures += 1
                continue
            if isinstance(decoded, Rejected):
                outcomes[photo] = decoded
                continue
            kps = None
            if args.keypoints:
                kps = parse_keypoints_json(Path(args.keypoints[start + offset]).read_text())
            items.append(TrackInput(decoded, kps))
            names.append(photo)
        t0 = time.perf_counter()
        results = operator(items) if items else []
        seconds = (time.perf_counter() - t0) / max(len(items), 1)
        outcomes.update(zip(names, results))
        images = {n: it.image for n, it in zip(names, items)}
        for photo in chunk:
            if photo not in outcomes:
                continue
            result = outcomes[photo]
            stem = Path(photo).stem
            if isinstance(result, Rejected):
                print(f"{photo}: REJECTED {result}")
                write_bytes(str(out_dir / f"{stem}.json"), json.dumps({"status": "rejected", "reason": result.reason, "detail": result.detail}, indent=2).encode())
                continue
            record = {"status": "ok", "source": photo, **result.to_json()}
            write_bytes(str(out_dir / f"{stem}.json"), json.dumps(record, indent=1).encode())
            with torch.no_grad():
                body = operator.body
                dev = body.device
                out = body(torch.from_numpy(result.shape)[None].to(dev), torch.from_numpy(result.pose)[None].to(dev), torch.from_numpy(result.transl)[None].to(dev))
                uv = project(out.vertices, torch.from_numpy(result.intrinsics)[None].to(dev))[0].cpu().numpy()
            overlay = draw_overlay(images[photo].rgb, uv, body.faces.cpu().numpy(), result.keypoints, result.projected_keypoints, label=f"facing: {result.facing}", hands=result.hands, face=result.face)
            overlay_path = out_dir / f"{stem}_overlay.png"
            overlay.save(overlay_path)
            q = result.quality
            print(
                f"{photo}: ok body={result.body_model} people={result.num_people} facing={result.facing} keypoints={int(q['visible_keypoints'])} "
                f"reproj={q['reprojection_error_px']:.1f}px ({100 * q['reprojection_error_ratio']:.1f}% of height) "
                f"mask_iou={q['mask_iou']:.2f} hands={','.join(s for s, h in result.hands.items() if h['tracked']) or 'none'} "
                f"face={'tracked' if result.face.get('tracked') else 'seen' if result.face else 'none'} {seconds:.2f}s -> {out_dir / (stem + '.json')}, {overlay_path}"
            )
    return 1 if failures else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from avatar_ops.avatar.fit import FitConfig
    from avatar_ops.io import storage
    from avatar_ops.pipeline import AvatarPipeline
    from avatar_ops.motion import load_motion
    from avatar_ops.stages.config import ExportConfig, PipelineConfig

    clips = ExportConfig().glb_clips + tuple(args.clip or ())
    try:
        export = ExportConfig(glb_clips=clips)
        for clip in args.clip or ():
            load_motion(clip)  # a bad clip fails here, not after every photo's fit
    except ValueError as err:
        print(f"error: --clip: {err}", file=sys.stderr)
        return 2
    pipeline = AvatarPipeline(
        PipelineConfig(
            preset=args.preset, tracking=_tracking_config(args), fit=FitConfig(iters=args.fit_iters), export=export,
            **_synthesis_settings(args, default_mode="none"),
        )
    )
    failures = 0
    for photo in args.photos:
        stem = Path(photo).stem
        out_dir = storage.join(args.output, stem)
        try:
            outcome = pipeline.run(photo, out_dir)
        except FileNotFoundError:
            print(f"{photo}: FAILED file not found")
            failures += 1
            continue
        total = sum(outcome.seconds.values())
        if outcome.status == "failed":
            print(f"{photo}: FAILED {outcome.reason}: {outcome.detail} ({total:.1f}s)")
            failures += 1
            continue
        if outcome.status != "ok":
            print(f"{photo}: REJECTED {outcome.reason}: {outcome.detail} ({total:.1f}s)")
            continue
        q = outcome.quality
        print(
            f"{photo}: ok psnr={q['fit_psnr']:.1f}dB (from {q['fit_psnr_before']:.1f}) alpha_iou={q['fit_alpha_iou']:.2f} "
            f"{total:.1f}s ({', '.join(f'{k} {v:.1f}s' for k, v in outcome.seconds.items())}) -> {out_dir}"
        )
    return 1 if failures else 0


def _synthesis_settings(args: argparse.Namespace, default_mode: str) -> dict:
    """PipelineConfig fields from --synthesis-model/--synthesis-mode (a model alone means both modes)."""
    from avatar_ops.synthesis.operator import SynthesisConfig

    mode = args.synthesis_mode or ("both" if args.synthesis_model else default_mode)
    extra = {k: v for k, v in {"size": args.synthesis_size, "seed": args.synthesis_seed}.items() if v is not None}
    modes = {}
    for name in SYNTHESIS_KINDS:
        count = getattr(args, f"{name}_frames")
        if count is not None:
            modes[name] = {"num_frames": count}
    return {"synthesis_mode": mode, "synthesis": SynthesisConfig.model_validate({"model": args.synthesis_model, "device": args.device, **extra, **modes})}


def _add_synthesis_args(p: argparse.ArgumentParser, default_mode: str) -> None:
    p.add_argument("--synthesis-model", metavar="PATH_OR_URI", help="StableVideoDiffusionPipeline folder (save_pretrained) or fsspec URI; without it the hints pass through unrefined")
    p.add_argument("--synthesis-mode", choices=SYNTHESIS_MODES, default=None, help=f"pseudo-labels to synthesize (default: both with --synthesis-model, else {default_mode})")
    p.add_argument("--view-frames", type=int, default=None, help="synthesized views on the orbit (default: 8)")
    p.add_argument("--pose-frames", type=int, default=None, help="synthesized frames of the motion clip (default: 8)")
    p.add_argument("--synthesis-size", type=int, default=None, help="side of the synthesized frames in pixels (default: 256)")
    p.add_argument("--synthesis-seed", type=int, default=None, help="noise seed of the synthesis (default: 0)")


def cmd_synthesize(args: argparse.Namespace) -> int:
    from avatar_ops.io import storage
    from avatar_ops.io.image import to_uint8
    from avatar_ops.io.media import gif_bytes, png_bytes
    from avatar_ops.pipeline import AvatarPipeline
    from avatar_ops.stages.config import PipelineConfig
    from avatar_ops.synthesis.diffusion import SynthesisModelError

    try:
        settings = _synthesis_settings(args, default_mode="both")
        if settings["synthesis_mode"] == "none":
            raise SystemExit("error: --synthesis-mode none leaves nothing to synthesize")
        pipeline = AvatarPipeline(PipelineConfig(tracking=_tracking_config(args), **settings))
    except SynthesisModelError as err:
        raise SystemExit(f"error: {err}") from err
    failures = 0
    for photo in args.photos:
        out_dir = storage.join(args.output, Path(photo).stem)
        try:
            outcome = pipeline.run(photo, out_dir, stop_after="synthesize")
        except FileNotFoundError:
            print(f"{photo}: FAILED file not found")
            failures += 1
            continue
        if outcome.status == "failed":
            print(f"{photo}: FAILED {outcome.reason}: {outcome.detail}")
            failures += 1
            continue
        if outcome.status == "rejected":
            print(f"{photo}: REJECTED {outcome.reason}: {outcome.detail}")
            continue
        result = outcome.synthesis
        frames = to_uint8(result.frames)
        counters: dict[str, int] = {}
        records = []
        for i, mode in enumerate(result.modes):
            k = counters[mode] = counters.get(mode, -1) + 1
            name = f"{mode}_{k:03d}.png"
            hint = result.hints[mode].rgb[k]
            storage.write_bytes(storage.join(out_dir, "frames", name), png_bytes(frames[i]))
            storage.write_bytes(storage.join(out_dir, "hints", name), png_bytes(to_uint8(hint)))
            records.append({
                "frame": f"frames/{name}", "hint": f"hints/{name}", "mode": mode, "weight": result.weights[i],
                "viewmat": result.cameras.viewmats[i].tolist(), "K": result.cameras.Ks[i].tolist(),
                "pose": result.pose[i].tolist(), "transl": result.transl[i].tolist(),
            })  # fmt: skip
        meta = {"source": photo, "refined": result.refined, "width": result.cameras.width, "height": result.cameras.height, "frames": records}
        storage.write_bytes(storage.join(out_dir, "frames.json"), json.dumps(meta, indent=1).encode())
        storage.write_bytes(storage.join(out_dir, "synthesis.gif"), gif_bytes(frames, fps=6))
        print(f"{photo}: {len(records)} frames ({', '.join(f'{m} {c + 1}' for m, c in counters.items())}), refined={result.refined} -> {out_dir}")
    return 1 if failures else 0


def cmd_animate(args: argparse.Namespace) -> int:
    from avatar_ops.avatar.animate import animate
    from avatar_ops.avatar.bundle import avatar_from_bytes
    from avatar_ops.body import BodyModelConfig, build_body_model, resolve_device
    from avatar_ops.io import storage
    from avatar_ops.io.media import gif_bytes
    from avatar_ops.motion import load_motion

    bundle = args.avatar if args.avatar.endswith(".safetensors") else storage.join(args.avatar, "avatar.safetensors")
    avatar = avatar_from_bytes(storage.read_bytes(bundle))
    if avatar.body_model == "smplx" and not args.smplx_path:
        raise SystemExit("error: this avatar was built on SMPL-X: pass --smplx-path")
    body = build_body_model(BodyModelConfig(kind=avatar.body_model, smplx_path=args.smplx_path, gender=args.gender), resolve_device(args.device))
    try:
        motion = load_motion(args.motion)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    frames = animate(avatar.to(body.device), body, motion, size=args.size, max_frames=args.max_frames)
    storage.write_bytes(args.output, gif_bytes(frames, fps=min(motion.fps, 30.0)))
    print(f"{args.avatar}: {len(frames)} frames of {args.motion} -> {args.output}")
    return 0


#: `batch`'s exit status when more rows failed than the job allows.
EXIT_TOO_MANY_FAILED = 3


def _outcome_table(summary: dict, threshold_source: str) -> str:
    lines = [f"{'status':<10} {'reason':<28} {'rows':>6}"]
    for key, count in sorted(summary["reasons"].items()):
        status, reason = key.split(":", 1)
        lines.append(f"{status:<10} {reason:<28} {count:>6}")
    if summary["statuses"].get("ok"):
        lines.append(f"{'ok':<10} {'':<28} {summary['statuses']['ok']:>6}")
    lines.append(f"{'total':<10} {'':<28} {summary['rows']:>6}   ({summary['resumed']} already done, {summary['wall_seconds']:.0f}s)")
    failed = summary["statuses"].get("failed", 0)
    verdict = "passed" if summary["passed"] else f"FAILED (exit {EXIT_TOO_MANY_FAILED})"
    lines.append(
        f"failed rows: {failed} of {summary['rows']} ({100 * summary['failed_ratio']:.2f}%); "
        f"max_failed_ratio {summary['max_failed_ratio']:g} ({threshold_source}): {verdict}"
    )
    return "\n".join(lines)


def _threshold_source(args: argparse.Namespace, config) -> str:
    """Where the job's max_failed_ratio came from, for the final table."""
    if args.max_failed_ratio is not None:
        return "from --max-failed-ratio"
    if any(o.split("=", 1)[0].strip() == "max_failed_ratio" for o in args.set):
        return "from --set"
    return "from --config" if "max_failed_ratio" in config.model_fields_set else "the default"


def batch_config(args: argparse.Namespace):
    """`batch`'s JobConfig: ``--config`` (or the defaults), then each ``--set``, then
    ``--max-failed-ratio``."""
    from jobs.config import JobConfig

    overrides = list(args.set) + ([f"max_failed_ratio={args.max_failed_ratio}"] if args.max_failed_ratio is not None else [])
    try:
        return JobConfig.load(args.config, overrides)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err


def cmd_batch(args: argparse.Namespace) -> int:
    from jobs.batch import run_job

    config = batch_config(args)
    try:
        summary = run_job(args.input, args.output, config, limit=args.limit, progress=not args.no_progress)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    print(_outcome_table(summary, _threshold_source(args, config)))
    print(f"manifest: {summary['manifest']}  avatars: {summary['output']}/avatars/  summary: {summary['output']}/summary.json")
    return 0 if summary["passed"] else EXIT_TOO_MANY_FAILED


def cmd_submit(args: argparse.Namespace) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from avatar_ops.io import storage

    client = JobSubmissionClient(args.address)
    entrypoint = f"avatar-forge batch {shlex.quote(args.input)} {shlex.quote(args.output)} --no-progress"
    runtime_env: dict = {"working_dir": str(Path(args.working_dir).resolve()), "excludes": [".venv", "out", ".git", "**/__pycache__"]}
    if args.config and storage.is_local(args.config):
        try:
            relative = Path(args.config).resolve().relative_to(Path(args.working_dir).resolve())
        except ValueError as err:
            raise SystemExit(f"error: --config {args.config} must be inside --working-dir {args.working_dir} (it is shipped with it), or a URI the cluster can read") from err
        entrypoint += f" --config {shlex.quote(str(relative))}"
    elif args.config:
        entrypoint += f" --config {shlex.quote(args.config)}"  # the cluster reads it (s3://...)
    for override in args.set:
        entrypoint += f" --set {shlex.quote(override)}"
    if args.max_failed_ratio is not None:
        entrypoint += f" --max-failed-ratio {args.max_failed_ratio}"
    if args.limit is not None:
        entrypoint += f" --limit {args.limit}"
    submission_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    print(submission_id)
    if not args.follow:
        return 0
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission_id):
            print(lines, end="")

    asyncio.run(tail())
    status = client.get_job_status(submission_id)
    print(f"{submission_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from serve.local import DEFAULT_CONFIG, load_serve_file, serve_until_stopped

    overrides: dict = {}
    if args.no_auth:
        overrides["auth"] = "disabled"
        print("warning: --no-auth: the API accepts requests without a key (local development only)", file=sys.stderr)
    if args.storage:
        overrides["storage"] = args.storage
    try:
        config = load_serve_file(args.config or DEFAULT_CONFIG, overrides)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    return serve_until_stopped(config, host=args.host, port=args.port, num_cpus=args.num_cpus)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-forge",
        description="Turn photos of people into animatable 3D Gaussian avatars.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    track = _command(
        sub,
        "track",
        summary="fit a body model to each photo; write its parameters (JSON) and an overlay (PNG)",
        description="Detect the main person in each photo (keypoints and mask), fit the body model to them, and write "
        "<stem>.json (shape, SMPL-X pose, translation, camera, keypoints, facing, quality) and <stem>_overlay.png per photo.",
    )
    track.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, PNG, WebP): local paths or fsspec URIs")
    track.add_argument("-o", "--output", default="out/track", help="output folder (default: out/track)")
    track.add_argument("--keypoints", action="append", metavar="JSON", help="2D keypoints for the photo at the same position (COCO-17 or OpenPose BODY_25 JSON); skips the detector")
    track.add_argument("--batch-size", type=int, default=8, help="photos fitted together (default: 8)")
    _add_body_args(track)
    track.set_defaults(func=cmd_track)

    gen = _command(
        sub,
        "generate",
        summary="build an animatable Gaussian avatar from each photo",
        description="Track, reconstruct, fit and export each photo into OUTPUT/<stem>/: avatar.safetensors + avatar.json "
        "(the animatable bundle), avatar.ply and avatar_canonical.ply/.splat (standard 3DGS), avatar.glb (skinned glTF with its "
        "motion clips, for Blender, three.js and game engines), preview.png, turntable.gif, animation.gif and contact_sheet.png.",
    )
    gen.add_argument("photos", nargs="+", metavar="PHOTO", help="image files: local paths or fsspec URIs")
    gen.add_argument("-o", "--output", default="out/avatars", help="output folder or URI (default: out/avatars)")
    gen.add_argument("--preset", choices=PRESETS, default="preview", help="fit quality: resolution, Gaussians, iterations (default: preview)")
    gen.add_argument("--fit-iters", type=int, default=None, help="override the preset's fitting iterations")
    gen.add_argument(
        "--clip", action="append", metavar="NPZ", default=None,
        help="an AMASS-style SMPL-X .npz motion added to avatar.glb's animations beside walk and wave (repeatable; named after the file's stem)",
    )  # fmt: skip
    _add_synthesis_args(gen, default_mode="none")
    _add_body_args(gen)
    gen.set_defaults(func=cmd_generate)

    syn = _command(
        sub,
        "synthesize",
        summary="write the synthesized pseudo-label frames of each photo (no fit, no export)",
        description="Track and reconstruct each photo, render appearance hints for new views (an orbit) and new poses "
        "(a motion clip), refine them with the video diffusion model, and write OUTPUT/<stem>/frames/*.png, hints/*.png, "
        "frames.json (mode, camera, pose, weight per frame; refined true/false) and synthesis.gif.",
    )
    syn.add_argument("photos", nargs="+", metavar="PHOTO", help="image files: local paths or fsspec URIs")
    syn.add_argument("-o", "--output", default="out/synthesis", help="output folder or URI (default: out/synthesis)")
    _add_synthesis_args(syn, default_mode="both")
    _add_body_args(syn)
    syn.set_defaults(func=cmd_synthesize)

    anim = _command(
        sub,
        "animate",
        summary="render an avatar following a motion clip into a GIF",
        description="Render an avatar (a folder written by `generate`, or its avatar.safetensors) following a SMPL-X motion: "
        "a bundled clip by name (walk, wave) or an AMASS-style .npz file.",
    )
    anim.add_argument("avatar", help="avatar folder or avatar.safetensors (path or URI)")
    anim.add_argument("--motion", default="walk", help="bundled clip name or .npz path (default: walk)")
    anim.add_argument("-o", "--output", default="out/animation.gif", help="GIF to write (default: out/animation.gif)")
    anim.add_argument("--size", type=int, default=256, help="frame size in pixels (default: 256)")
    anim.add_argument("--max-frames", type=int, default=None, help="render at most this many frames")
    _add_body_args(anim, choose_body=False)  # the avatar's bundle names its body
    anim.set_defaults(func=cmd_animate)

    batch = _command(
        sub,
        "batch",
        summary="the batch job: every photo of a folder, prefix or manifest -> avatars + a manifest (Ray Data)",
        description="Run decode -> track -> reconstruct -> [synthesize] -> fit -> export over INPUT on Ray Data (an embedded local Ray, or the "
        "cluster at $RAY_ADDRESS / ray.address in the config) and write OUTPUT/avatars/<id>/, OUTPUT/manifest/manifest.parquet "
        "(one row per input: status ok/rejected/failed, reason, files, seconds per stage, quality), OUTPUT/summary.json and "
        "OUTPUT/job_config.yaml. INPUT is a folder or prefix (local or s3://; recursive; .jpg .jpeg .png .webp) or a manifest "
        "(.parquet, .csv, .jsonl with `uri` and optional `id`, `keypoints`). Rerunning skips rows already finished. Manifest rows "
        "are written as they finish, in a fixed schema (see the README). Exit status: 0 when the job ran and at most "
        f"max_failed_ratio of its rows failed; {EXIT_TOO_MANY_FAILED} when more failed; 1 on an error before or around the rows "
        "(bad arguments, unreadable INPUT, the cluster lost too often).",
    )
    batch.add_argument("input", help="folder, prefix or manifest (local path or URI)")
    batch.add_argument("output", help="output folder or prefix (local path or URI)")
    batch.add_argument("--config", metavar="URI", help="job YAML (pipeline, stages, ray, inputs, attempts, max_failed_ratio) at a local path or any fsspec URI (s3://...); see jobs/configs/")
    batch.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override one config value (repeatable; the value is read as YAML), e.g. --set stages.fit.batch_size=2 --set pipeline.preset=standard; validated with the rest")
    batch.add_argument("--max-failed-ratio", type=float, default=None, metavar="R", help=f"exit with status {EXIT_TOO_MANY_FAILED} when more than this share of rows failed (0..1; rejected rows never count; default: the config's max_failed_ratio, 0.05)")
    batch.add_argument("--limit", type=int, default=None, help="process only the first N inputs")
    batch.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    batch.set_defaults(func=cmd_batch)

    submit = _command(
        sub,
        "submit",
        summary="submit the batch job to a Ray cluster through the Jobs API",
        description="Submit `avatar-forge batch INPUT OUTPUT` to the cluster whose dashboard is at --address, with this "
        "folder as the runtime_env working_dir. Prints the submission id; --follow tails the job's logs until it ends.",
    )
    submit.add_argument("input", help="folder, prefix or manifest the cluster can read (e.g. s3://...)")
    submit.add_argument("output", help="output prefix the cluster can write (e.g. s3://...)")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--config", metavar="PATH_OR_URI", help="job YAML: a path inside --working-dir (shipped with it) or a URI the cluster can read (s3://...)")
    submit.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="config override passed to `batch --set` (repeatable)")
    submit.add_argument("--max-failed-ratio", type=float, default=None, metavar="R", help="passed to `batch --max-failed-ratio`")
    submit.add_argument("--limit", type=int, default=None, help="process only the first N inputs")
    submit.add_argument("--working-dir", default=".", help="folder shipped as the job's working_dir (default: .)")
    submit.add_argument("--follow", action="store_true", help="tail the job's logs until it ends; exit 0 only if it succeeded")
    submit.set_defaults(func=cmd_submit)

    srv = _command(
        sub,
        "serve",
        summary="run the online API (Ray Serve + FastAPI) locally until Ctrl-C / SIGTERM",
        description="Deploy the online API from a Serve config file (default: serve/local.yaml; serve/config.yaml is the "
        "production one) on an embedded local Ray, or on the cluster at $RAY_ADDRESS, and serve until Ctrl-C or SIGTERM; "
        "then the app is deleted and the embedded Ray stopped. Endpoints: POST /v1/track, POST /v1/avatars, "
        "GET /v1/avatars/{id}[/files/{name}], POST /v1/avatars/{id}/animate, /healthz, /readyz, /docs. "
        "API keys come from the config's args.api_keys or $AVATAR_API_KEYS (comma-separated).",
    )
    srv.add_argument("--config", help="Serve config YAML (default: the bundled serve/local.yaml)")
    srv.add_argument("--host", default=None, help="address to bind (default: the config's http_options.host)")
    srv.add_argument("--port", type=int, default=None, help="port (default: the config's http_options.port)")
    srv.add_argument("--storage", default=None, help="where avatars are kept: folder or s3://... (overrides args.storage)")
    srv.add_argument("--no-auth", action="store_true", help="accept requests without an API key (local development only)")
    srv.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
