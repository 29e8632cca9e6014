"""What every stage computes (:class:`PipelineConfig`) and the content ids of photos under it."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, field_validator

from avatar_ops.avatar.fit import PRESET_SETTINGS, FitConfig
from avatar_ops.avatar.limits import PartLimits
from avatar_ops.avatar.reconstruct import ReconstructConfig
from avatar_ops.io.image import DecodeConfig
from avatar_ops.synthesis.operator import SynthesisConfig
from avatar_ops.tracking.operator import TrackingConfig
from avatar_ops.types import FrozenConfig, Preset, SynthesisMode


class ExportConfig(FrozenConfig):
    """What ``export`` writes besides the bundle and the PLYs."""

    turntable_views: int = Field(24, ge=1, description="Frames of turntable.gif.")
    preview_size: int = Field(256, ge=16, description="Side of the previews in pixels.")
    clip: str = Field("wave", description="Bundled clip (or .npz path) for animation.gif.")
    animation_frames: int = Field(30, ge=1, description="Frames of animation.gif.")
    glb_clips: tuple[str, ...] = Field(("walk", "wave"), description="Motion clips written into avatar.glb as its animations: bundled clip names or .npz paths.")
    glb_texture_size: int = Field(1024, ge=64, le=4096, description="Side of avatar.glb's base-colour texture in pixels.")
    glb_max_frames: int = Field(300, ge=1, le=3000, description="Most frames of each clip written into avatar.glb.")
    viewer: bool = Field(True, description="Write viewer.html, the self-contained page showing the splat and the animated glTF (about 3 MB of script plus the avatar's files, base64).")

    @field_validator("clip")
    @classmethod
    def _known_clip(cls, clip: str) -> str:
        return _check_clip("clip", clip)

    @field_validator("glb_clips")
    @classmethod
    def _known_clips(cls, clips: tuple[str, ...]) -> tuple[str, ...]:
        from avatar_ops.avatar.gltf import clip_name

        for clip in clips:
            _check_clip("glb_clips", clip)
        names = [clip_name(c, i) for i, c in enumerate(clips)]
        if len(set(names)) != len(names):
            raise ValueError(f"`glb_clips` must name distinct animations (a path's stem names its clip), got {names}")
        return clips


def _check_clip(field: str, clip: str) -> str:
    """A bundled clip's name or a path ending in .npz (read when the avatar is exported)."""
    from avatar_ops.motion import bundled_clips

    if clip not in bundled_clips() and not clip.endswith(".npz"):
        raise ValueError(f"`{field}` entries must be a bundled clip ({', '.join(bundled_clips())}) or a .npz path, got {clip!r}")
    return clip


class PipelineConfig(FrozenConfig):
    """Everything that decides an avatar's content (hashed into avatar ids)."""

    preset: Preset = Field("preview", description="Quality preset: resolution, Gaussians, iterations.")
    num_gaussians: int | None = Field(None, ge=100, description="Overrides the preset's Gaussian count.")
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    reconstruct: ReconstructConfig = Field(default_factory=ReconstructConfig, description="num_gaussians and limits here are ignored: the preset (or `num_gaussians`) and `limits` set them.")
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig, description="Diffusion-refined pseudo-label views and poses (weights, per-mode settings).")
    synthesis_mode: SynthesisMode = Field("none", description="Which pseudo-labels to synthesize for the fit; without `synthesis.model` the hints pass through unrefined and are not fitted to.")
    fit: FitConfig = Field(default_factory=FitConfig, description="preset and limits here are ignored: the pipeline's preset and `limits` set them.")
    limits: PartLimits = Field(default_factory=PartLimits, description="Per-part limits on the Gaussians' offsets, scales, anisotropy and opacity: reconstruction builds within them and the fit keeps them.")
    export: ExportConfig = Field(default_factory=ExportConfig)

    def with_preset(self, preset: str | None) -> PipelineConfig:
        """This config with another quality preset (None keeps this one's)."""
        if preset is None or preset == self.preset:
            return self
        return PipelineConfig.model_validate({**self.model_dump(), "preset": preset})

    def reconstruct_config(self) -> ReconstructConfig:
        return self.reconstruct.model_copy(update={"num_gaussians": self.num_gaussians or PRESET_SETTINGS[self.preset]["num_gaussians"], "limits": self.limits})

    def fit_config(self) -> FitConfig:
        return self.fit.model_copy(update={"preset": self.preset, "limits": self.limits})

    def digest(self) -> str:
        """A stable hash of the content-deciding settings (device excluded)."""
        data = self.model_dump(mode="json")
        data["tracking"].pop("device", None)
        for key in ("device", "cache_dir", "compile", "decode_chunk_size"):  # where and how, not what
            data["synthesis"].pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def avatar_id(data: bytes, config_digest: str) -> str:
    """Content id of a photo under a pipeline config."""
    return hashlib.sha256(data + config_digest.encode()).hexdigest()[:20]
