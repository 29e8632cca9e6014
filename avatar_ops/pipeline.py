"""Photo -> avatar files: decode, track, reconstruct, fit, export, with per-stage timings.

The batch job and the online API call the same operators; this module chains them for one
process (the ``generate`` command).
"""

from __future__ import annotations

import dataclasses
import time

from avatar_ops.avatar.export import export_avatar
from avatar_ops.avatar.fit import PRESETS, FitConfig, FittingOperator
from avatar_ops.avatar.reconstruct import ReconstructConfig, ReconstructionOperator, ReconstructResult
from avatar_ops.io import storage
from avatar_ops.io.image import DecodeConfig, decode_image
from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator, TrackInput
from avatar_ops.types import Rejected


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


class AvatarPipeline:
    """Operators built once; ``run(uri, out_dir)`` per photo."""

    def __init__(self, tracking: TrackingConfig | None = None, preset: str = "preview", decode: DecodeConfig | None = None, fit_iters: int | None = None) -> None:
        if preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}.")
        self.tracker = TrackingOperator.from_config(tracking)
        body = self.tracker.body
        self.reconstructor = ReconstructionOperator(ReconstructConfig(num_gaussians=PRESETS[preset]["num_gaussians"]), body)
        self.fitter = FittingOperator(FitConfig(preset=preset, iters=fit_iters), body)
        self.decode = decode or DecodeConfig()
        self.preset = preset

    def run(self, source: str, out_dir: str, keypoints=None) -> Outcome:
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        decoded = decode_image(storage.read_bytes(source), self.decode)
        seconds["decode"] = time.perf_counter() - t
        if isinstance(decoded, Rejected):
            return Outcome(source, "rejected", decoded.reason, decoded.detail, seconds=seconds)
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
        assert isinstance(rec, ReconstructResult)
        t = time.perf_counter()
        fitted = self.fitter([(rec, decoded.rgb, [])])[0]
        seconds["fit"] = time.perf_counter() - t
        t = time.perf_counter()
        quality = {**{f"track_{k}": v for k, v in track.quality.items()}, **{f"reconstruct_{k}": v for k, v in rec.quality.items()}, **{f"fit_{k}": v for k, v in fitted.quality.items()}}
        extra = {"source": source, "preset": self.preset, "tracking": track.to_json(), "quality": quality}
        files = export_avatar(fitted.avatar, self.tracker.body, out_dir, extra=extra, photo=decoded.rgb)
        seconds["export"] = time.perf_counter() - t
        return Outcome(source, "ok", files=files, seconds=seconds, quality=quality)
