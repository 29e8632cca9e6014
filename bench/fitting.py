"""Avatar building on this machine: rasteriser speed, then seconds per stage and peak memory for
one sample photo per preset (each preset in its own process, so peak memory is its own), on the
CPU and, where CUDA exists, on the GPU; then the fit of the sample photos one by one against one
batched call (seconds per avatar). Prints JSON. Target on 2 CPU cores: preview <= 40 s end to end.

    python bench/fitting.py [--presets preview standard] [--photo samples/man_hoodie_masked.png] [--no-batched]

``--fit-batch 1 4 16`` adds the fit alone at those batch sizes (avatars per second per preset and
device: ``fit_throughput``); ``--devices cuda`` times the GPU only; ``--partial PATH`` rewrites
the report so far after every figure, so a run stopped from outside keeps what it measured
(``bench/gpu_check.sh`` uses all three). On CUDA every figure is taken after
``torch.cuda.synchronize()``, and the fit renders through gsplat (the backend follows the device).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sync(device: str) -> None:
    """Wait for the GPU's queued kernels (CUDA calls return before they finish)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _rasteriser(n: int, size: int, device: str) -> dict:
    import torch

    from avatar_ops.render.camera import Cameras
    from avatar_ops.render.gaussians import rasterize

    g = torch.Generator().manual_seed(0)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.5, 1.6, 0.3])
    params = [means, torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g) * 0.01 + 0.005, torch.rand(n, generator=g) * 0.5 + 0.5, torch.rand(n, 3, generator=g)]
    params = [p.to(device).requires_grad_(True) for p in params]
    view = torch.eye(4)
    view[2, 3] = 3.0
    f = size * 1.2
    cams = Cameras(view[None], torch.tensor([[[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]]), size, size).to(device)
    rasterize(*params, cams)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    out = rasterize(*params, cams)
    _sync(device)
    forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    out.rgb.sum().backward()
    _sync(device)
    backward = time.perf_counter() - t0
    return {"gaussians": n, "size": size, "device": device, "forward_s": round(forward, 3), "backward_s": round(backward, 3)}


def main() -> None:
    from avatar_ops.types import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["preview"], choices=PRESETS, help="presets to time (default: preview)")
    parser.add_argument("--photo", default=str(REPO / "samples" / "man_hoodie_masked.png"), help="photo to build (default: the hoodie sample)")
    parser.add_argument("--no-batched", action="store_true", help="skip the one-by-one vs batched fit comparison")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="devices to time (default: the CPU, and CUDA where torch sees it)")
    parser.add_argument("--fit-batch", nargs="+", type=int, metavar="N", help="also time the fit alone with N avatars per call (the sample photos repeated), per device and preset")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end run of --photo per preset")
    parser.add_argument("--partial", metavar="PATH", help="rewrite the report so far to PATH (JSON) after every figure")
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one_preset(args.one[0], args.one[1], args.photo)))
        return
    if args.fit_batch and min(args.fit_batch) < 1:
        parser.error(f"--fit-batch sizes must be >= 1, got {args.fit_batch}")

    import subprocess

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices is None else list(dict.fromkeys(args.devices))
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error(f"--devices cuda: torch {torch.__version__} sees no CUDA device")
    report = {"machine": {"threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}, "rasteriser": [], "pipeline": []}
    if torch.cuda.is_available():
        report["machine"].update(gpu=torch.cuda.get_device_name(), torch=torch.__version__, torch_cuda=torch.version.cuda)

    def record(section: str, entry: dict) -> None:
        report.setdefault(section, []).append(entry)
        if args.partial:  # whole file each time, renamed into place: a reader never sees half of one
            tmp = Path(args.partial).with_suffix(".tmp")
            tmp.write_text(json.dumps(report, indent=2))
            tmp.replace(args.partial)

    for device in devices:
        for n in (5000, 20000):
            record("rasteriser", _rasteriser(n, 256, device))
    if args.fit_batch:
        for device in devices:
            for entry in _fit_throughput(device, args.presets, args.fit_batch):
                record("fit_throughput", entry)
    for device in devices if not args.no_pipeline else []:
        for preset in args.presets:
            child = subprocess.run([sys.executable, __file__, "--one", preset, device, "--photo", args.photo], capture_output=True, text=True, check=False)
            if child.returncode != 0:
                sys.stderr.write(child.stderr)
                record("pipeline", {"preset": preset, "device": device, "error": child.stderr[-2000:]})
                continue
            record("pipeline", json.loads(child.stdout.strip().splitlines()[-1]))
    if not args.no_batched:
        for device in devices:
            record("batched_fit", _batched_fit(device))
    print(json.dumps(report, indent=2))


def _fit_throughput(device: str, presets: list[str], batches: list[int]):
    """Avatars per second of the fit alone, per preset and batch size (yielded one at a time).

    The sample photos are tracked once and reconstructed once per preset, then repeated to fill
    each batch. Each timed call is preceded by a 2-iteration call at the same batch size, so
    kernel loading and the allocator's growth are not timed."""
    import torch

    from avatar_ops.avatar.fit import FitInput, FittingOperator
    from avatar_ops.avatar.reconstruct import ReconstructInput
    from avatar_ops.io.image import decode_image
    from avatar_ops.stages.config import PipelineConfig
    from avatar_ops.stages.stage import build_stages
    from avatar_ops.tracking.operator import TrackingConfig, TrackInput
    from avatar_ops.types import Rejected

    track, reconstruct, fit = build_stages(PipelineConfig(preset=presets[0], tracking=TrackingConfig(device=device)), ["track", "reconstruct", "fit"])
    photos = [decode_image(p.read_bytes()) for p in sorted((REPO / "samples").glob("*.[jp][pn]g"))]
    tracked = [(t, p) for t, p in zip(track.operator()([TrackInput(p) for p in photos]), photos) if not isinstance(t, Rejected)]
    if not tracked:
        raise RuntimeError("no sample photo could be tracked; nothing to fit")
    for preset in presets:
        recs = reconstruct.operator(preset)([ReconstructInput(t, p.rgb) for t, p in tracked])
        pool = [FitInput(r, p.rgb) for r, (_, p) in zip(recs, tracked) if not isinstance(r, Rejected)]
        fitter = fit.operator(preset)
        warm_up = FittingOperator(fitter.config.model_copy(update={"iters": 2}), fitter.body)
        settings = fitter.config.settings
        for batch in batches:
            items = [pool[i % len(pool)] for i in range(batch)]
            try:
                warm_up(items)
                _sync(device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                outcomes = fitter(items)
                _sync(device)
            except Exception as err:  # noqa: BLE001 - a figure that fails (out of memory, a kernel error) is reported; the next batch size goes on
                traceback.print_exc()
                yield {"device": device, "preset": preset, "batch": batch, "error": f"{type(err).__name__}: {err}"}
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            seconds = time.perf_counter() - t0
            yield {
                "device": device, "preset": preset, "batch": batch, "iters": settings["iters"], "resolution": settings["resolution"],
                "gaussians_per_avatar": round(sum(int(i.reconstruction.avatar.offset.shape[0]) for i in items) / batch),
                "seconds": round(seconds, 3), "avatars_per_s": round(batch / seconds, 3), "s_per_avatar": round(seconds / batch, 3),
                "iters_per_s": round(settings["iters"] / seconds, 2),
                "psnr_mean": round(sum(o.quality["psnr"] for o in outcomes) / batch, 2),
                "psnr_before_mean": round(sum(o.quality["psnr_before"] for o in outcomes) / batch, 2),
                "peak_cuda_bytes": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
            }  # fmt: skip


def _batched_fit(device: str, preset: str = "preview") -> dict:
    """Every sample photo tracked and reconstructed, then fitted one call per avatar and all in one
    call (same operator, same settings)."""
    import torch

    from avatar_ops.avatar.fit import FitInput
    from avatar_ops.avatar.reconstruct import ReconstructInput
    from avatar_ops.io.image import decode_image
    from avatar_ops.stages.config import PipelineConfig
    from avatar_ops.stages.stage import build_stages
    from avatar_ops.tracking.operator import TrackingConfig, TrackInput

    config = PipelineConfig(preset=preset, tracking=TrackingConfig(device=device))
    track, reconstruct, fit = build_stages(config, ["track", "reconstruct", "fit"])
    photos = [decode_image(p.read_bytes()) for p in sorted((REPO / "samples").glob("*.[jp][pn]g"))]
    tracks = track.operator()([TrackInput(p) for p in photos])
    recs = reconstruct.operator()([ReconstructInput(t, p.rgb) for t, p in zip(tracks, photos)])
    items = [FitInput(rec, p.rgb) for rec, p in zip(recs, photos)]
    fitter = fit.operator()

    def timed(fn) -> tuple[float, list]:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    one_s, alone = timed(lambda: [fitter([item])[0] for item in items])
    batch_s, together = timed(lambda: fitter(items))
    return {
        "device": device, "preset": preset, "avatars": len(items),
        "one_by_one_s_per_avatar": round(one_s / len(items), 2), "batched_s_per_avatar": round(batch_s / len(items), 2),
        "psnr_one_by_one": [round(o.quality["psnr"], 2) for o in alone], "psnr_batched": [round(o.quality["psnr"], 2) for o in together],
    }  # fmt: skip


def _one_preset(preset: str, device: str, photo: str) -> dict:
    import tempfile

    import torch

    from avatar_ops.pipeline import AvatarPipeline
    from avatar_ops.stages.config import PipelineConfig
    from avatar_ops.tracking.operator import TrackingConfig

    pipeline = AvatarPipeline(PipelineConfig(preset=preset, tracking=TrackingConfig(device=device)))
    with tempfile.TemporaryDirectory() as out:
        outcome = pipeline.run(photo, out)
    return {
        "preset": preset, "device": device, "status": outcome.status, "seconds": {k: round(v, 2) for k, v in outcome.seconds.items()},
        "total_s": round(sum(outcome.seconds.values()), 2), "psnr": outcome.quality.get("fit_psnr"),
        "psnr_before_fit": outcome.quality.get("fit_psnr_before"), "alpha_iou": outcome.quality.get("fit_alpha_iou"),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    }  # fmt: skip


if __name__ == "__main__":
    main()
