"""Hint-guided video diffusion with an SVD-family pipeline (diffusers).

The hint frames are encoded with the pipeline's VAE, noised to ``strength`` (0: untouched, 1: pure
noise) and denoised by the spatio-temporal UNet conditioned on the input photo (its CLIP image
embedding, and its VAE latent concatenated to every frame, or each frame's own hint latent), then
decoded in chunks. Long sequences run in overlapping windows whose latents are blended
(:mod:`avatar_ops.synthesis.windows`); the noise is drawn once for the whole sequence, so the
frames two windows share start from the same sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar_ops.io import storage
from avatar_ops.synthesis.windows import blend_windows, window_starts

SUPPORTED_PIPELINES = ("StableVideoDiffusionPipeline",)


class SynthesisModelError(ValueError):
    """The synthesis weights at a path cannot be used (raised at load time, naming the path)."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"`dtype` must be auto, float32, float16 or bfloat16, got {name!r}.")
    return dtypes[name]


def load_pipeline(uri: str, device: torch.device, dtype: torch.dtype, cache_dir: str | None = None, compile_unet: bool = False):
    """An SVD-family pipeline from a local folder or fsspec URI (copied once to a node-local
    cache); never from a hub. Every failure is a :class:`SynthesisModelError` naming ``uri``."""
    from diffusers import StableVideoDiffusionPipeline

    try:
        local = storage.cache_locally(uri, cache_dir)
    except (OSError, ValueError) as err:
        raise SynthesisModelError(f"synthesis model {uri!r}: cannot read it: {type(err).__name__}: {err}") from err
    index = Path(local) / "model_index.json"
    if not index.is_file():
        raise SynthesisModelError(f"synthesis model {uri!r}: no model_index.json there (expected a diffusers pipeline folder saved with save_pretrained).")
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise SynthesisModelError(f"synthesis model {uri!r}: model_index.json is not valid JSON: {err}") from err
    if class_name not in SUPPORTED_PIPELINES:
        raise SynthesisModelError(f"synthesis model {uri!r}: model_index.json names {class_name!r}; supported: {list(SUPPORTED_PIPELINES)}.")
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(str(local), torch_dtype=dtype, local_files_only=True, use_safetensors=True)
    except Exception as err:  # noqa: BLE001 - diffusers/safetensors raise many types; all mean "unusable weights"
        raise SynthesisModelError(f"synthesis model {uri!r}: loading failed: {type(err).__name__}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if getattr(pipe.vae.config, "force_upcast", False) and dtype == torch.float16:
        pipe.vae.to(torch.float32)  # the SVD VAE overflows in fp16
    if compile_unet:
        pipe.unet = torch.compile(pipe.unet)
    return pipe


def latent_factor(pipe) -> int:
    """Pixels per latent cell of the pipeline's VAE."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def _vae_encode(pipe, images: Tensor, chunk: int) -> Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, C, h, w] latent means (unscaled)."""
    vae = pipe.vae
    out = [vae.encode(images[i : i + chunk].to(vae.dtype)).latent_dist.mode() for i in range(0, len(images), chunk)]
    return torch.cat(out)


def vae_decode(pipe, latents: Tensor, chunk: int) -> Tensor:
    """[N, C, h, w] scaled latents -> [N, H, W, 3] in [0, 1], ``chunk`` frames per VAE call."""
    vae = pipe.vae
    latents = latents / vae.config.scaling_factor
    frames = []
    for i in range(0, len(latents), chunk):
        part = latents[i : i + chunk].to(vae.dtype)
        frames.append(vae.decode(part, num_frames=len(part)).sample.float())
    return ((torch.cat(frames) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def vae_round_trip(pipe, frames: Tensor, chunk: int = 8) -> Tensor:
    """[N, H, W, 3] in [0, 1] -> encoded and decoded again (what strength 0 returns)."""
    dev = pipe.vae.device
    with torch.no_grad():
        latents = _vae_encode(pipe, frames.permute(0, 3, 1, 2).to(dev) * 2 - 1, chunk) * pipe.vae.config.scaling_factor
        return vae_decode(pipe, latents, chunk)


def _photo_conditioning(pipe, photo: Tensor, size: int, noise_aug: float, generator: torch.Generator, do_cfg: bool) -> tuple[Tensor, Tensor]:
    """CLIP image embedding [B, 1, D] and VAE latent [B, C, h, w] of the photo ([H, W, 3] in
    [0, 1]), zeros prepended for classifier-free guidance."""
    dev = pipe.vae.device
    image = photo.permute(2, 0, 1)[None].to(dev).float()
    crop = pipe.feature_extractor.crop_size
    clip_side = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
    clip_in = F.interpolate(image, size=clip_side, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    pixels = pipe.feature_extractor(images=clip_in, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False, return_tensors="pt").pixel_values
    encoder = pipe.image_encoder
    embeds = encoder(pixels.to(dev, next(encoder.parameters()).dtype)).image_embeds[:, None]
    vae_in = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False) * 2 - 1
    vae_in = vae_in + noise_aug * torch.randn(vae_in.shape, generator=generator, device="cpu").to(dev)
    latent = _vae_encode(pipe, vae_in, 1)
    if do_cfg:
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
        latent = torch.cat([torch.zeros_like(latent), latent])
    return embeds, latent


def refine_frames(
    pipe,
    photo: Tensor,
    init_frames: Tensor,
    condition_frames: Tensor | None,
    *,
    strength: float,
    steps: int,
    window: int,
    overlap: int,
    min_guidance: float,
    max_guidance: float,
    fps: int,
    motion_bucket_id: int,
    noise_aug_strength: float,
    decode_chunk_size: int,
    seed: int,
) -> Tensor:
    """Refine hint frames.

    Args:
        photo: [H, W, 3] the input photo in [0, 1] (identity conditioning).
        init_frames: [T, S, S, 3] hint frames in [0, 1] that are noised and denoised.
        condition_frames: [T, S, S, 3] frames whose latents condition each frame instead of the
            photo's latent, or None for the photo's.
        strength: 0 returns the VAE round trip of ``init_frames``; 1 starts from pure noise.

    Returns:
        [T, S, S, 3] frames in [0, 1].
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"`strength` must be in [0, 1], got {strength}.")
    from diffusers import EulerDiscreteScheduler

    dev = pipe.vae.device
    dtype = pipe.unet.dtype
    total, size = init_frames.shape[0], init_frames.shape[1]
    if size % latent_factor(pipe):
        raise ValueError(f"frame size {size} must be a multiple of the VAE's factor {latent_factor(pipe)}.")
    generator = torch.Generator("cpu").manual_seed(seed)
    scale = pipe.vae.config.scaling_factor
    with torch.no_grad():
        init = _vae_encode(pipe, init_frames.permute(0, 3, 1, 2).to(dev) * 2 - 1, decode_chunk_size) * scale
        first_step = min(steps, int(round(steps * (1 - strength))))
        if first_step >= steps:
            return vae_decode(pipe, init, decode_chunk_size)
        do_cfg = max_guidance > 1.0
        embeds, photo_latent = _photo_conditioning(pipe, photo, size, noise_aug_strength, generator, do_cfg)
        if condition_frames is not None:
            frame_cond = _vae_encode(pipe, condition_frames.permute(0, 3, 1, 2).to(dev) * 2 - 1, decode_chunk_size)
        noise = torch.randn(init.shape, generator=generator, device="cpu").to(dev, init.dtype)
        time_ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], device=dev, dtype=dtype)
        time_ids = torch.cat([time_ids, time_ids]) if do_cfg else time_ids
        starts = window_starts(total, window, overlap)
        outputs = []
        for start in starts:
            sl = slice(start, min(start + window, total))
            n = sl.stop - sl.start
            scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
            scheduler.set_timesteps(steps, device=dev)
            timesteps = scheduler.timesteps[first_step:]
            scheduler.set_begin_index(first_step)
            latents = scheduler.add_noise(init[sl], noise[sl], timesteps[:1].repeat(n))[None].to(dtype)  # [1, n, C, h, w]
            if condition_frames is None:
                cond = photo_latent[:, None].expand(-1, n, -1, -1, -1)
            else:
                cond = frame_cond[sl][None]
                cond = torch.cat([torch.zeros_like(cond), cond]) if do_cfg else cond
            cond = cond.to(dtype)
            guidance = torch.linspace(min_guidance, max_guidance, n, device=dev, dtype=dtype).view(1, n, 1, 1, 1)
            for t in timesteps:
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = torch.cat([scheduler.scale_model_input(model_in, t), cond], dim=2)
                pred = pipe.unet(model_in, t, encoder_hidden_states=embeds.to(dtype), added_time_ids=time_ids, return_dict=False)[0]
                if do_cfg:
                    uncond, cond_pred = pred.chunk(2)
                    pred = uncond + guidance * (cond_pred - uncond)
                latents = scheduler.step(pred, t, latents).prev_sample
            outputs.append(latents[0].float())
            del latents, model_in, pred
            if dev.type == "cuda":
                torch.cuda.empty_cache()  # free the window's activations before the next one
        blended = blend_windows(outputs, starts, total)
        return vae_decode(pipe, blended, decode_chunk_size)
