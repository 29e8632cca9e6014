"""Photo -> avatar files: decode, track, reconstruct, fit, export, with per-stage timings.

:class:`PipelineConfig` says what every stage computes; the batch job, the online API and the
``generate`` command all build their operators from it. :class:`AvatarPipeline` chains the
operators in one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from avatar_ops.avatar.export import export_avatar
from avatar_ops.avatar.fit import PRESET_SETTINGS, FitConfig, FittingOperator
from avatar_ops.avatar.limits import PartLimits
from avatar_ops.avatar.reconstruct import ReconstructConfig, ReconstructionOperator, ReconstructResult
from avatar_ops.body import BodyModel, build_body_model, resolve_device
from avatar_ops.io import storage
from avatar_ops.io.image import DecodeConfig, DecodedImage, decode_image
from avatar_ops.synthesis.operator import SynthesisConfig, SynthesisOperator, SynthesisResult
from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator, TrackInput, TrackResult
from avatar_ops.types import FrozenConfig, Preset, Rejected, SynthesisMode


class ExportConfig(FrozenConfig):
    """What ``export`` writes besides the bundle and the PLYs."""

    turntable_views: int = Field(24, ge=1, description="Frames of turntable.gif.")
    preview_size: int = Field(256, ge=16, description="Side of the previews in pixels.")
    clip: str = Field("wave", description="Bundled clip (or .npz path) for animation.gif.")
    animation_frames: int = Field(30, ge=1, description="Frames of animation.gif.")


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


@dataclasses.dataclass
class Outcome:
    """What happened to one photo: ``status`` ok / rejected, ``reason``, output ``files``,
    per-stage ``seconds`` and ``quality`` figures."""

    source: str
    status: str
    reason: str = ""
    detail: str = ""
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    quality: dict[str, float] = dataclasses.field(default_factory=dict)
    synthesis: SynthesisResult | None = None


def merged_quality(track: TrackResult, rec: ReconstructResult, fit_quality: dict, synthesis: dict | None = None) -> dict[str, float]:
    return {
        **{f"track_{k}": v for k, v in track.quality.items()}, **{f"reconstruct_{k}": v for k, v in rec.quality.items()},
        **{f"synthesis_{k}": v for k, v in (synthesis or {}).items()}, **{f"fit_{k}": v for k, v in fit_quality.items()},
    }  # fmt: skip


def fit_labels(result: SynthesisResult | None) -> list:
    """The pseudo-labels the fit uses: refined frames only (unrefined hints are the avatar's own
    renders and would teach it nothing)."""
    return result.pseudo_labels() if result is not None and result.refined else []


STAGES = ("track", "reconstruct", "synthesize", "fit", "export")


def stage_operator(kind: str, config: PipelineConfig, body: BodyModel):
    """The operator of a reconstruct, synthesize or fit stage on an already built body (None for
    export, which only needs the body)."""
    if kind == "reconstruct":
        return ReconstructionOperator(config.reconstruct_config(), body)
    if kind == "fit":
        return FittingOperator(config.fit_config(), body)
    if kind == "synthesize":
        return SynthesisOperator.from_config(config.synthesis, body)
    return None


def build_stage(kind: str, config: PipelineConfig, body: BodyModel | None = None) -> tuple[BodyModel, Any]:
    """The body model and operator of one stage (:data:`STAGES`), built once per actor or replica.
    Stages sharing a process pass the ``body`` the first one built (from the same config)."""
    if kind not in STAGES:
        raise ValueError(f"`kind` must be one of {STAGES}, got {kind!r}.")
    if kind == "track":
        tracker = TrackingOperator.from_config(config.tracking, body)
        return tracker.body, tracker
    if body is None:
        body = build_body_model(config.tracking.body, resolve_device(config.tracking.device))
    return body, stage_operator(kind, config, body)


def failure(kind: str, err: Exception) -> dict[str, str]:
    """The outcome of an item whose stage raised."""
    return {"status": "failed", "reason": "exception", "detail": f"{kind}: {type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"}


def run_isolated(process: Callable[[list], list], items: Sequence, on_error: Callable[[Any, Exception], Any]) -> tuple[list, list[float]]:
    """``process(items)`` (one output per item) on the whole batch; if that raises, item by item,
    an item that still raises giving ``on_error(item, err)``, so only the culprit fails. Returns
    the outputs and the seconds each item took."""
    t0 = time.perf_counter()
    try:
        out = process(list(items))
        return out, [(time.perf_counter() - t0) / len(items)] * len(items)
    except Exception:  # noqa: BLE001 - isolate the item that raises; the others go on
        pass
    out, spent = [], []
    for item in items:
        t1 = time.perf_counter()
        try:
            out.append(process([item])[0])
        except Exception as err:  # noqa: BLE001
            out.append(on_error(item, err))
        spent.append(time.perf_counter() - t1)
    return out, spent


def export_result(
    config: PipelineConfig, avatar, body, out_dir: str, source: str, track: TrackResult, quality: dict, photo: np.ndarray, row_id: str | None = None
) -> dict[str, str]:
    """Write an avatar's export files with the metadata every caller records; returns name -> URI."""
    extra = {"source": source, "preset": config.preset, "config_digest": config.digest(), "tracking": track.to_json(), "quality": quality}
    if row_id is not None:
        extra = {"id": row_id, **extra}
    return export_avatar(avatar, body, out_dir, extra=extra, photo=photo, **config.export.model_dump())


class AvatarPipeline:
    """Operators built once; ``run(uri, out_dir)`` per photo."""

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.tracker = TrackingOperator.from_config(self.config.tracking)
        body = self.tracker.body
        self.reconstructor = stage_operator("reconstruct", self.config, body)
        self.fitter = stage_operator("fit", self.config, body)
        self.synthesizer = stage_operator("synthesize", self.config, body) if self.config.synthesis_mode != "none" else None

    def run(self, source: str, out_dir: str, keypoints: list[np.ndarray] | None = None, stop_after: Literal["synthesize", "export"] = "export") -> Outcome:
        """Every stage on one photo; ``stop_after="synthesize"`` returns the synthesized frames
        (``Outcome.synthesis``) without fitting or exporting."""
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        decoded = decode_image(storage.read_bytes(source), self.config.decode)
        seconds["decode"] = time.perf_counter() - t
        if isinstance(decoded, Rejected):
            return Outcome(source, "rejected", decoded.reason, decoded.detail, seconds=seconds)
        return self.run_decoded(source, decoded, out_dir, keypoints, seconds, stop_after)

    def run_decoded(self, source: str, decoded: DecodedImage, out_dir: str, keypoints=None, seconds: dict | None = None, stop_after: str = "export") -> Outcome:
        if stop_after not in ("synthesize", "export"):
            raise ValueError(f"`stop_after` must be 'synthesize' or 'export', got {stop_after!r}.")
        if stop_after == "synthesize" and self.synthesizer is None:
            raise ValueError("stop_after='synthesize' needs a synthesis_mode other than 'none'.")
        seconds = dict(seconds or {})
        t = time.perf_counter()
        track = self.tracker([TrackInput(decoded, keypoints)])[0]
        seconds["track"] = time.perf_counter() - t
        if isinstance(track, Rejected):
            return Outcome(source, "rejected", track.reason, track.detail, seconds=seconds)
        t = time.perf_counter()
        rec = self.reconstructor([(track, decoded.rgb)])[0]
        seconds["reconstruct"] = time.perf_counter() - t
        if isinstance(rec, Rejected):
            return Outcome(source, "rejected", rec.reason, rec.detail, seconds=seconds)
        synthesis = None
        if self.synthesizer is not None:
            t = time.perf_counter()
            synthesis = self.synthesizer([(rec.avatar, decoded.rgb, self.config.synthesis_mode)])[0]
            seconds["synthesize"] = time.perf_counter() - t
            if stop_after == "synthesize":
                return Outcome(source, "ok", seconds=seconds, quality=synthesis.summary(), synthesis=synthesis)
        t = time.perf_counter()
        fitted = self.fitter([(rec, decoded.rgb, fit_labels(synthesis))])[0]
        seconds["fit"] = time.perf_counter() - t
        t = time.perf_counter()
        quality = merged_quality(track, rec, fitted.quality, synthesis.summary() if synthesis else None)
        files = export_result(self.config, fitted.avatar, self.tracker.body, out_dir, source, track, quality, decoded.rgb)
        seconds["export"] = time.perf_counter() - t
        return Outcome(source, "ok", files=files, seconds=seconds, quality=quality)
