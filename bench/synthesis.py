"""Hint-guided video diffusion: seconds per frame and peak memory. Prints JSON.

    python bench/synthesis.py [--frames 8] [--steps 10] [--settings cuda_full]

- ``cpu_tiny``: the tiny random SVD pipeline the tests use (saved and loaded through
  ``load_pipeline``), 64 px frames, float32 on CPU; peak resident memory of the process.
- ``cuda_full``: where CUDA exists, a real-size SVD architecture (diffusers' default
  ``UNetSpatioTemporalConditionModel`` / ``AutoencoderKLTemporalDecoder`` configs and a ViT-H/14
  image encoder, random weights: no download) at 512 px, float16, 14-frame windows; peak CUDA
  memory from ``torch.cuda.max_memory_allocated``. Absent (with the reason) without CUDA.
Each setting runs in its own process so peaks do not mix. ``--settings`` picks some (default: both).
Both load and run through the operator's own path: ``load_pipeline`` and ``refine_frames``, with
the dtype the operator's ``dtype: auto`` resolves to on that device (float16 on CUDA; the SVD
VAE then runs in float32, as ``load_pipeline`` upcasts it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETTINGS = ("cpu_tiny", "cuda_full")


def _full_size_pipeline(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024))
    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True, sigma_max=700.0, sigma_min=0.002, timestep_type="continuous", interpolation_type="linear")
    pipe = StableVideoDiffusionPipeline(
        vae=AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=768
        ),  # SVD's VAE
        image_encoder=encoder, unet=UNetSpatioTemporalConditionModel(num_frames=14), scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def run_setting(name: str, frames: int, steps: int) -> dict:
    import torch

    from avatar_ops.synthesis.diffusion import load_pipeline, refine_frames, resolve_dtype

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        if name == "cpu_tiny":
            from avatar_ops.synthesis.tiny_svd import make_tiny_svd

            device, size, window = torch.device("cpu"), 64, 4
            folder = make_tiny_svd(Path(tmp) / "svd")
        else:
            device, size, window = torch.device("cuda"), 512, 14
            folder = _full_size_pipeline(Path(tmp) / "svd")
        dtype = resolve_dtype("auto", device)  # what SynthesisConfig(dtype="auto") runs at
        t = time.perf_counter()
        pipe = load_pipeline(str(folder), device, dtype)
        load_s = time.perf_counter() - t
        generator = torch.Generator().manual_seed(0)
        hints = torch.rand(frames, size, size, 3, generator=generator)
        photo = torch.rand(size, size, 3, generator=generator)
        kwargs = dict(
            strength=0.6, steps=steps, window=window, overlap=2, min_guidance=1.0, max_guidance=2.5, fps=7, motion_bucket_id=127,
            noise_aug_strength=0.02, decode_chunk_size=8, seed=0,
        )  # fmt: skip
        refine_frames(pipe, photo, hints[: min(frames, window)], None, **{**kwargs, "steps": 2})  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = refine_frames(pipe, photo, hints, None, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    report = {
        "setting": name, "device": str(device), "dtype": str(dtype).removeprefix("torch."), "size": size, "frames": frames, "window": window,
        "steps_run": round(steps * 0.6), "load_s": round(load_s, 2), "seconds": round(seconds, 3), "seconds_per_frame": round(seconds / frames, 4),
        "finite": bool(torch.isfinite(out).all()),
    }  # fmt: skip
    if device.type == "cuda":
        report["peak_cuda_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        report["gpu"] = torch.cuda.get_device_name()
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="frames to synthesize (default: 8)")
    parser.add_argument("--steps", type=int, default=10, help="full schedule; strength 0.6 runs 60%% of it (default: 10)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="settings to run (default: all)")
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.setting:
        print(json.dumps(run_setting(args.setting, args.frames, args.steps)))
        return
    import torch

    results = {}
    for name in dict.fromkeys(args.settings):
        if name == "cuda_full" and not torch.cuda.is_available():
            results[name] = {"skipped": "no CUDA device on this machine"}
            continue
        cmd = [sys.executable, __file__, "--setting", name, "--frames", str(args.frames), "--steps", str(args.steps)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            results[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
