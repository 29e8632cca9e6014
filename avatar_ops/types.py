"""Types shared by every operator."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, ConfigDict


class FrozenConfig(BaseModel):
    """Base of every operator config: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A bad input item: the operator's answer instead of an exception.

    Attributes:
        reason: a short machine-readable reason class, e.g. ``"truncated_image"``.
        detail: a human-readable sentence saying what was wrong.
    """

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason
