"""How far each body part's Gaussians may move off the surface, grow, stretch and fade.

Reconstruction builds avatars inside these limits and the fit keeps them there: hinge penalties
push back before a limit is reached, and a projection after every step makes each limit exact.
Hands and feet are held tightest, so re-posed limbs keep their surface (no spikes, no fraying).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator
from torch import Tensor

from avatar_ops.body.parts import PART_NAMES
from avatar_ops.types import FrozenConfig

_MAX_OFFSET = {"head": 0.08, "neck": 0.03, "torso": 0.12, "upper_arm": 0.06, "forearm": 0.05, "hand": 0.02, "thigh": 0.15, "shin": 0.12, "foot": 0.04}
_MAX_SCALE = {"head": 0.02, "neck": 0.02, "torso": 0.035, "upper_arm": 0.025, "forearm": 0.02, "hand": 0.015, "thigh": 0.035, "shin": 0.03, "foot": 0.02}


def _per_part(value: dict[str, float], name: str) -> dict[str, float]:
    if set(value) != set(PART_NAMES):
        raise ValueError(f"`{name}` must give a value for every part {list(PART_NAMES)}, got {sorted(value)}.")
    if any(v < 0 for v in value.values()):
        raise ValueError(f"`{name}` values must be >= 0, got {value}.")
    return value


class PartLimits(FrozenConfig):
    """Limits on the Gaussians of each body part (:data:`~avatar_ops.body.parts.PART_NAMES`)."""

    max_offset: dict[str, float] = Field(default_factory=lambda: dict(_MAX_OFFSET), description="Furthest (metres) a part's Gaussians may sit out along their triangle's normal (clothing, hair).")
    min_offset: float = Field(-0.01, le=0, description="Furthest (metres) any Gaussian may sink below the surface.")
    max_scale: dict[str, float] = Field(default_factory=lambda: dict(_MAX_SCALE), description="Largest standard deviation (metres) along the surface, per part.")
    min_scale: float = Field(0.001, gt=0, description="Smallest standard deviation (metres) along the surface.")
    max_anisotropy: float = Field(3.0, ge=1, description="Largest ratio of a Gaussian's two in-surface scales.")
    max_thickness: float = Field(0.5, gt=0, le=1, description="Largest ratio of the scale along the normal to the smaller in-surface scale.")
    min_opacity: float = Field(0.9, gt=0, lt=1, description="Lowest opacity, so the body stays solid from every side.")
    hinge_margin: float = Field(0.8, gt=0, le=1, description="The hinge penalties start at this fraction of each limit.")

    @field_validator("max_offset", "max_scale")
    @classmethod
    def _every_part(cls, value: dict[str, float], info) -> dict[str, float]:
        return _per_part(value, info.field_name)

    def per_gaussian(self, part: Tensor) -> tuple[Tensor, Tensor]:
        """[N] part ids -> [N] max offsets and [N] max scales."""
        offsets = torch.tensor([self.max_offset[n] for n in PART_NAMES], device=part.device)
        scales = torch.tensor([self.max_scale[n] for n in PART_NAMES], device=part.device)
        return offsets[part], scales[part]

    @torch.no_grad()
    def project(self, part: Tensor, offset: Tensor, rotation: Tensor, log_scale: Tensor, opacity_logit: Tensor) -> None:
        """Move parameters onto the limits, in place: offsets clamped, rotations turned into turns
        about the normal (the thin axis stays on the normal), in-surface scales clamped and their
        ratio bounded, the normal scale bounded by the smaller in-surface one, opacity floored."""
        max_offset, max_scale = self.per_gaussian(part)
        offset.copy_(torch.minimum(offset.clamp(min=self.min_offset), max_offset))
        in_plane = torch.stack([rotation[:, 0], torch.zeros_like(rotation[:, 0]), torch.zeros_like(rotation[:, 0]), rotation[:, 3]], 1)
        norm = in_plane.norm(dim=1, keepdim=True)
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=rotation.device).expand_as(rotation)
        rotation.copy_(torch.where(norm > 1e-6, in_plane / norm.clamp(min=1e-6), identity))
        hi = torch.log(max_scale)[:, None]
        surface = torch.minimum(log_scale[:, :2].clamp(min=math.log(self.min_scale)), hi)
        low = surface.min(1, keepdim=True).values
        surface = torch.minimum(surface, low + math.log(self.max_anisotropy))
        normal = torch.minimum(log_scale[:, 2:].clamp(min=math.log(0.5 * self.min_scale)), low + math.log(self.max_thickness))
        log_scale.copy_(torch.cat([surface, normal], 1))
        opacity_logit.clamp_(min=math.log(self.min_opacity / (1 - self.min_opacity)))

    def hinge(self, part: Tensor, offset: Tensor, log_scale: Tensor) -> Tensor:
        """Penalty [scalar] growing as offsets, scales and anisotropy near their limits."""
        max_offset, max_scale = self.per_gaussian(part)
        m = self.hinge_margin
        over_offset = torch.relu(offset - m * max_offset) / max_offset.clamp(min=1e-3)
        over_scale = torch.relu(log_scale[:, :2] - torch.log(m * max_scale)[:, None])
        ratio = (log_scale[:, 0] - log_scale[:, 1]).abs()
        over_ratio = torch.relu(ratio - math.log(m * self.max_anisotropy) if m * self.max_anisotropy > 1 else ratio)
        return (over_offset**2).mean() + (over_scale**2).sum(1).mean() + (over_ratio**2).mean()
