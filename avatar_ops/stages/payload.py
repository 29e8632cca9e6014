"""One photo's state on its way through the stages."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.avatar.reconstruct import ReconstructResult
from avatar_ops.io.image import DecodedImage, decode_image
from avatar_ops.stages.config import PipelineConfig
from avatar_ops.synthesis.operator import SynthesisResult
from avatar_ops.tracking.operator import TrackResult
from avatar_ops.types import FINAL_STATUSES, Preset, Rejected, Status, SynthesisMode

#: The fields that hold a stage's output for the next stage (dropped once a payload is finished).
STATE_FIELDS = ("image", "track", "reconstruction", "synthesis", "avatar")


@dataclasses.dataclass
class Payload:
    """What a stage takes and gives for one photo: who it is, what is asked of it, its outcome so
    far and the state the next stage needs.

    Attributes:
        source: where the photo came from (a URI, or ``upload:<id>`` in the online API).
        id: the avatar's id, recorded in the export's metadata (None: not recorded).
        out_dir: where ``export`` writes (needed by that stage only).
        preset, synthesis_mode: this photo's choices (None: the stage config's).
        keypoints: 2D keypoints given with the photo, one [K, 3] array per person (None: detect).
        status: ``pending`` while stages remain, then ``ok``, ``rejected`` or ``failed``.
        reason, detail: why, when not ok (``reason`` from :data:`avatar_ops.types.REJECT_REASONS`
            or :data:`~avatar_ops.types.FAILURE_REASONS`).
        image, track, reconstruction, synthesis, avatar: the outputs of decode, track,
            reconstruct, synthesize and fit (``avatar`` is the fitted one).
        quality: the figures of every stage so far (``track_*``, ``reconstruct_*``, ``synthesis_*``,
            ``fit_*``), set by the fit.
        files: name -> URI of what export wrote.
        seconds: seconds each stage spent on this photo.
    """

    source: str
    id: str | None = None
    out_dir: str | None = None
    preset: Preset | None = None
    synthesis_mode: SynthesisMode | None = None
    keypoints: list[np.ndarray] | None = None
    status: Status = "pending"
    reason: str = ""
    detail: str = ""
    image: DecodedImage | None = None
    track: TrackResult | None = None
    reconstruction: ReconstructResult | None = None
    synthesis: SynthesisResult | None = None
    avatar: GaussianAvatar | None = None
    quality: dict[str, float] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    def update(self, changes: dict) -> None:
        """Apply a stage's changes; a final ``status`` drops the state no stage needs any more."""
        for key, value in changes.items():
            if not hasattr(self, key):
                raise ValueError(f"a stage update names no Payload field: {key!r}.")
            setattr(self, key, value)
        if self.status in FINAL_STATUSES:
            for key in STATE_FIELDS:
                setattr(self, key, None)

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + seconds, 4)


def rejected(result: Rejected) -> dict:
    """A stage's changes for an item its operator rejected."""
    return {"status": "rejected", "reason": result.reason, "detail": result.detail}


def decoded_payload(source: str, data: bytes, config: PipelineConfig, **fields) -> Payload:
    """The payload of a photo's bytes: decoded (timed as ``decode``) or rejected with the reason."""
    t0 = time.perf_counter()
    decoded = decode_image(data, config.decode)
    payload = Payload(source, **fields)
    payload.update(rejected(decoded) if isinstance(decoded, Rejected) else {"image": decoded, "detail": "; ".join(decoded.notes)})
    payload.add_seconds("decode", time.perf_counter() - t0)
    return payload
