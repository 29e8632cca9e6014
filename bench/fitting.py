"""Avatar building on this machine: rasteriser speed, then seconds per stage and peak memory for
one sample photo per preset (each preset in its own process, so peak memory is its own), on the
CPU and, where CUDA exists, on the GPU; then the fit of the sample photos one by one against one
batched call (seconds per avatar). Prints JSON. Target on 2 CPU cores: preview <= 40 s end to end.

    python bench/fitting.py [--presets preview standard] [--photo samples/man_hoodie_masked.png] [--no-batched]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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
    t0 = time.perf_counter()
    out = rasterize(*params, cams)
    forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    out.rgb.sum().backward()
    backward = time.perf_counter() - t0
    return {"gaussians": n, "size": size, "device": device, "forward_s": round(forward, 3), "backward_s": round(backward, 3)}


def main() -> None:
    from avatar_ops.types import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["preview"], choices=PRESETS, help="presets to time (default: preview)")
    parser.add_argument("--photo", default=str(REPO / "samples" / "man_hoodie_masked.png"), help="photo to build (default: the hoodie sample)")
    parser.add_argument("--no-batched", action="store_true", help="skip the one-by-one vs batched fit comparison")
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one_preset(args.one[0], args.one[1], args.photo)))
        return

    import subprocess

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {"machine": {"threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}, "rasteriser": [], "pipeline": []}
    for device in devices:
        for n in (5000, 20000):
            report["rasteriser"].append(_rasteriser(n, 256, device))
    for device in devices:
        for preset in args.presets:
            child = subprocess.run([sys.executable, __file__, "--one", preset, device, "--photo", args.photo], capture_output=True, text=True, check=False)
            if child.returncode != 0:
                report["pipeline"].append({"preset": preset, "device": device, "error": child.stderr[-2000:]})
                continue
            report["pipeline"].append(json.loads(child.stdout.strip().splitlines()[-1]))
    if not args.no_batched:
        report["batched_fit"] = [_batched_fit(device) for device in devices]
    print(json.dumps(report, indent=2))


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
