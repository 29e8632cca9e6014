"""Types shared by every operator."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict


class FrozenConfig(BaseModel):
    """Base of every operator config: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


#: The quality presets (resolution, Gaussians, iterations), cheapest first.
Preset = Literal["preview", "standard", "high"]
PRESETS: tuple[str, ...] = get_args(Preset)
#: The kinds of pseudo-label the synthesis stage makes (new views, new poses).
SynthesisKind = Literal["view", "pose"]
SYNTHESIS_KINDS: tuple[str, ...] = get_args(SynthesisKind)
#: Which of them a pipeline synthesizes.
SynthesisMode = Literal["none", "view", "pose", "both"]
SYNTHESIS_MODES: tuple[str, ...] = get_args(SynthesisMode)

#: Which way a tracked person faces the camera.
Facing = Literal["front", "back", "side"]
FACINGS: tuple[str, ...] = get_args(Facing)

#: The operator stages, in the order a photo goes through them (decoding comes before them all).
StageKind = Literal["track", "reconstruct", "synthesize", "fit", "export"]
STAGE_KINDS: tuple[str, ...] = get_args(StageKind)
#: Where an item stands: ``pending`` while stages remain, then one of the final ones.
Status = Literal["pending", "ok", "rejected", "failed"]
FINAL_STATUSES: tuple[str, ...] = get_args(Status)[1:]

#: Every reason an operator rejects an input item for, with its class: a bounded label for the
#: metrics and dashboards (several reasons share one).
REJECT_REASONS: dict[str, str] = {
    "empty_file": "bad_input", "not_an_image": "bad_input", "unsupported_format": "bad_input", "truncated_image": "bad_input",
    "too_many_pixels": "bad_input", "too_small": "bad_input", "unreadable": "bad_input", "bad_keypoints": "bad_input",
    "too_many_scans": "bad_input", "decode_timeout": "bad_input", "bad_id": "bad_input", "duplicate_id": "bad_input",
    "no_person": "no_person", "too_few_keypoints": "no_person", "subject_too_small": "subject", "subject_truncated": "subject",
    "fit_failed": "fit", "reconstruction_failed": "reconstruct",
}  # fmt: skip

#: Reasons the batch job or Serve (not an operator) fails an item for, with their classes.
FAILURE_REASONS: dict[str, str] = {"not_found": "not_found", "exception": "exception", "interrupted": "exception", "timeout": "timeout"}


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A bad input item: the operator's answer instead of an exception.

    Attributes:
        reason: a short machine-readable reason, one of :data:`REJECT_REASONS`, e.g.
            ``"truncated_image"``.
        detail: a human-readable sentence saying what was wrong.
    """

    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REJECT_REASONS:
            raise ValueError(f"Rejected `reason` must be one of {sorted(REJECT_REASONS)}, got {self.reason!r}.")

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason
