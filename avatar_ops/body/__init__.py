"""Body models behind one interface: Anny (free default) and SMPL-X (licensed files by path/URI)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from avatar_ops.body.base import KEYPOINT_NAMES, SMPLX_JOINT_NAMES, BodyModel, BodyOutput, zero_pose
from avatar_ops.types import FrozenConfig


class BodyModelConfig(FrozenConfig):
    """Which parametric body to use."""

    kind: Literal["anny", "smplx"] = Field("anny", description="`anny` (offline, ships in its wheel) or `smplx` (licensed model files at `smplx_path`).")
    smplx_path: str | None = Field(None, description="SMPL-X .npz file, or folder holding SMPLX_<GENDER>.npz; a local path or fsspec URI (s3://...).")
    gender: Literal["neutral", "male", "female"] = Field("neutral", description="SMPL-X gender file to load.")
    num_betas: int = Field(10, ge=1, le=300, description="SMPL-X shape coefficients.")


def build_body_model(config: BodyModelConfig, device: str | torch.device = "cpu") -> BodyModel:
    """Build the configured body model on ``device`` (Anny's first build takes about a minute,
    then loads from ``ANNY_CACHE_DIR``)."""
    if config.kind == "anny":
        from avatar_ops.body.anny_body import AnnyBody, build_anny

        model, regressor = build_anny(device=device)
        return AnnyBody(model, regressor).to(device)
    if config.smplx_path is None:
        raise ValueError("`smplx_path` is required when `kind` is 'smplx', got None.")
    from avatar_ops.body.smplx_body import SMPLXBody

    return SMPLXBody.from_file(config.smplx_path, gender=config.gender, num_betas=config.num_betas, device=device)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


__all__ = ["BodyModel", "BodyModelConfig", "BodyOutput", "KEYPOINT_NAMES", "SMPLX_JOINT_NAMES", "build_body_model", "resolve_device", "zero_pose"]
