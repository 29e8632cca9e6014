"""The synthesis operator (GAS-style): hints of the reconstructed avatar for new views and poses,
refined by a video diffusion model into pseudo-labels for the final fit.

A mode switcher keeps *view* synthesis (an orbit around the subject in its photo pose) and *pose*
synthesis (the subject following a motion clip) apart: each mode has its own strength, frame
count, window and overlap, guidance, conditioning hints and optionally its own weights. A request
asks for ``view``, ``pose`` or ``both``; every frame records the mode that produced it. With no
weights configured, the hints pass through unchanged and the result says ``refined: False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from avatar_ops.avatar.fit import PseudoLabel
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BodyModel, BodyOperator
from avatar_ops.render.camera import Cameras
from avatar_ops.synthesis.hints import Hints, pose_targets, render_hints, view_targets
from avatar_ops.types import SYNTHESIS_KINDS, FrozenConfig

MODES = SYNTHESIS_KINDS


class ModeConfig(FrozenConfig):
    """Settings of one synthesis mode."""

    num_frames: int = Field(8, ge=1, description="Target frames (views on the orbit, or clip frames).")
    strength: float = Field(0.5, ge=0, le=1, description="How far the hints are noised before denoising: 0 keeps them, 1 ignores them.")
    steps: int = Field(12, ge=1, description="Denoising steps of the full schedule (strength s runs the last s x steps).")
    window: int | None = Field(None, ge=1, description="Frames per diffusion call (default: the UNet's num_frames).")
    overlap: int = Field(2, ge=0, description="Frames shared by consecutive windows, blended linearly.")
    min_guidance: float = Field(1.0, ge=0, description="Classifier-free guidance of the first frame of a window.")
    max_guidance: float = Field(2.5, ge=0, description="Guidance of the last frame (SVD ramps it across the window; <= 1 disables guidance).")
    init_hint: Literal["rgb", "normal"] = Field("rgb", description="The hint that is noised and denoised.")
    frame_condition: Literal["photo", "hint"] = Field("photo", description="What conditions every frame besides the photo's CLIP embedding: the photo's latent (SVD's default) or the frame's own RGB hint latent (tighter geometry).")
    model: str | None = Field(None, description="This mode's own pipeline folder or URI (an adapter-tuned copy); default: the operator's `model`.")
    weight: float = Field(0.3, ge=0, description="Weight of this mode's frames as pseudo-labels (the photo weighs 1).")


class ViewModeConfig(ModeConfig):
    elevation_deg: float = Field(5.0, ge=-89, le=89, description="Camera elevation of the orbit.")


class PoseModeConfig(ModeConfig):
    strength: float = Field(0.4, ge=0, le=1, description="How far the hints are noised before denoising.")
    clip: str = Field("walk", description="Bundled clip name or .npz path of the target poses.")
    camera: Literal["fixed", "follow"] = Field("fixed", description="Camera fixed in front of the first frame, or following the body.")


class SynthesisConfig(FrozenConfig):
    """What the synthesis operator computes (scheduling lives in the job or Serve config)."""

    model: str | None = Field(None, description="SVD-family diffusers pipeline folder or fsspec URI; None: hints pass through (refined: false).")
    cache_dir: str | None = Field(None, description="Node-local cache for remote weights (default: $AVATAR_CACHE_DIR).")
    size: int = Field(256, ge=16, description="Side of the synthesized frames in pixels (a multiple of the VAE's factor).")
    device: str = Field("auto", description="`auto` (CUDA when available), `cpu` or `cuda[:N]`.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: float16 on CUDA, float32 on CPU.")
    compile: bool = Field(False, description="torch.compile the UNet (CUDA; pays off on long jobs).")
    decode_chunk_size: int = Field(8, ge=1, description="Frames per VAE encode/decode call (memory).")
    fps: int = Field(7, ge=1, description="SVD's fps conditioning.")
    motion_bucket_id: int = Field(127, ge=0, description="SVD's motion conditioning.")
    noise_aug_strength: float = Field(0.02, ge=0, description="Noise added to the photo's conditioning latent.")
    seed: int = Field(0, description="Seeds the noise: the same seed gives the same frames.")
    background: float = Field(1.0, ge=0, le=1, description="Grey level behind the avatar in the hints.")
    view: ViewModeConfig = Field(default_factory=ViewModeConfig, description="View synthesis settings.")
    pose: PoseModeConfig = Field(default_factory=PoseModeConfig, description="Pose synthesis settings.")


@dataclasses.dataclass
class SynthesisInput:
    """One avatar to synthesize pseudo-labels of: the ``avatar``, its ``photo`` [H, W, 3] uint8
    (the diffusion model's conditioning) and the ``modes`` (``view``, ``pose``, ``both`` or a list)."""

    avatar: GaussianAvatar
    photo: np.ndarray
    modes: str | Sequence[str] = "both"


@dataclasses.dataclass
class SynthesisResult:
    """Synthesized frames of one avatar (all requested modes, concatenated).

    Attributes:
        frames: [T, S, S, 3] float in [0, 1].
        hints: the :class:`Hints` per mode.
        mask: [T, S, S] the hint alpha (where a frame is trusted).
        cameras: T cameras; pose [T, 55, 3]; transl [T, 3].
        modes: the mode of each frame.
        refined: False when no weights were configured (frames are the hints).
        weights: the pseudo-label weight of each frame.
    """

    frames: Tensor
    hints: dict[str, Hints]
    mask: Tensor
    cameras: Cameras
    pose: Tensor
    transl: Tensor
    modes: list[str]
    refined: bool
    weights: list[float]

    def summary(self) -> dict[str, float]:
        return synthesis_summary(self.modes, self.refined)

    def pseudo_labels(self) -> list[PseudoLabel]:
        """One label per frame, for :class:`~avatar_ops.avatar.fit.FittingOperator`."""
        return [
            PseudoLabel(image=self.frames[i], mask=self.mask[i], camera=self.cameras[i : i + 1], pose=self.pose[i], transl=self.transl[i], weight=self.weights[i], mode=self.modes[i])
            for i in range(len(self.modes))
        ]


def synthesis_summary(modes: list[str], refined: bool) -> dict[str, float]:
    """Quality figures of a synthesis result: ``refined`` (1/0) and frames per mode."""
    return {"refined": float(refined), **{f"{mode}_frames": float(modes.count(mode)) for mode in dict.fromkeys(modes)}}


def parse_modes(value: str | Sequence[str]) -> tuple[str, ...]:
    """``view``, ``pose``, ``both`` (or a list of them) -> the modes in canonical order."""
    items = [value] if isinstance(value, str) else list(value)
    chosen: set[str] = set()
    for item in items:
        if item == "both":
            chosen.update(MODES)
        elif item in MODES:
            chosen.add(item)
        else:
            raise ValueError(f"synthesis mode must be 'view', 'pose' or 'both', got {item!r}.")
    if not chosen:
        raise ValueError("at least one synthesis mode is needed.")
    return tuple(m for m in MODES if m in chosen)


class SynthesisOperator(BodyOperator):
    """``op(items: Sequence[SynthesisInput]) -> list[SynthesisResult]``, one per item, in order."""

    config_class = SynthesisConfig

    def __init__(self, config: SynthesisConfig, body: BodyModel, pipelines: dict[str, object] | None = None) -> None:
        """``pipelines`` maps each mode to a loaded pipeline (or None: pass-through)."""
        super().__init__(config, body)
        self.pipelines = {mode: (pipelines or {}).get(mode) for mode in MODES}

    @classmethod
    def from_config(cls, config: SynthesisConfig | None = None, *, body: BodyModel | None = None) -> SynthesisOperator:
        """Load each mode's weights once (modes naming the same folder share one pipeline)."""
        config, body = cls._config_and_body(config, body)
        from avatar_ops.body import resolve_device
        from avatar_ops.synthesis.diffusion import load_pipeline, resolve_dtype

        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        loaded: dict[str, object] = {}
        pipelines = {}
        for mode in MODES:
            uri = getattr(config, mode).model or config.model
            if uri is None:
                pipelines[mode] = None
                continue
            if uri not in loaded:
                loaded[uri] = load_pipeline(uri, device, dtype, config.cache_dir, config.compile)
            pipelines[mode] = loaded[uri]
        return cls(config, body, pipelines)

    def targets(self, avatar: GaussianAvatar, mode: str) -> tuple[Tensor, Tensor, Cameras]:
        cfg = self.config
        if mode == "view":
            return view_targets(avatar, self.body, cfg.view.num_frames, cfg.size, cfg.view.elevation_deg)
        from avatar_ops.motion import load_motion

        return pose_targets(avatar, self.body, load_motion(cfg.pose.clip), cfg.size, cfg.pose.num_frames, cfg.pose.camera)

    def __call__(self, items: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        return [self._one(item.avatar, item.photo, parse_modes(item.modes)) for item in items]

    def _one(self, avatar: GaussianAvatar, photo: np.ndarray, modes: tuple[str, ...]) -> SynthesisResult:
        from avatar_ops.synthesis.diffusion import refine_frames

        frames, hints_by_mode, labels, weights = [], {}, [], []
        refined = []
        photo_t = torch.from_numpy(np.ascontiguousarray(photo)).float() / 255.0
        for mode in modes:
            mcfg: ModeConfig = getattr(self.config, mode)
            pose, transl, cams = self.targets(avatar, mode)
            hints = render_hints(avatar, self.body, pose, transl, cams, mode, self.config.background)
            hints_by_mode[mode] = hints
            pipe = self.pipelines[mode]
            if pipe is None:
                out = hints.rgb
            else:
                init = hints.rgb if mcfg.init_hint == "rgb" else hints.normal
                out = refine_frames(
                    pipe, photo_t, init, hints.rgb if mcfg.frame_condition == "hint" else None,
                    strength=mcfg.strength, steps=mcfg.steps, window=mcfg.window or pipe.unet.config.num_frames, overlap=mcfg.overlap,
                    min_guidance=mcfg.min_guidance, max_guidance=mcfg.max_guidance, fps=self.config.fps, motion_bucket_id=self.config.motion_bucket_id,
                    noise_aug_strength=self.config.noise_aug_strength, decode_chunk_size=self.config.decode_chunk_size, seed=self.config.seed,
                ).to(hints.rgb.device)  # fmt: skip
            refined.append(pipe is not None)
            frames.append(out)
            labels += [mode] * len(hints)
            weights += [mcfg.weight] * len(hints)
        parts = [hints_by_mode[m] for m in modes]
        return SynthesisResult(
            frames=torch.cat(frames), hints=hints_by_mode, mask=torch.cat([h.mask for h in parts]),
            cameras=Cameras(torch.cat([h.cameras.viewmats for h in parts]), torch.cat([h.cameras.Ks for h in parts]), self.config.size, self.config.size),
            pose=torch.cat([h.pose for h in parts]), transl=torch.cat([h.transl for h in parts]), modes=labels, refined=all(refined), weights=weights,
        )  # fmt: skip
