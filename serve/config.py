"""Typed settings of the online API (the ``args`` of ``serve/config.yaml``).

Scheduling (replicas, ``num_gpus``, queue limits) is not here: it sits in the ``deployments``
section of ``serve/config.yaml`` (or the options given to :func:`serve.app.build_application`).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from avatar_ops.stages.config import PipelineConfig
from avatar_ops.types import FrozenConfig

API_KEYS_ENV = "AVATAR_API_KEYS"


class BatchSettings(FrozenConfig):
    """How a stage's replica groups concurrent requests (``@serve.batch``)."""

    max_batch_size: int = Field(4, ge=1, description="Most requests one operator call takes.")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="How long the first request waits for others to join its batch.")


#: The API's pixel limit (the batch job's is DecodeConfig's 40 MP): 4000 x 4000, so one request's
#: decoding holds at most 64 MB; every stage works at or below decode.max_side (2048) anyway.
API_MAX_PIXELS = 16_000_000


class ServeSettings(FrozenConfig):
    """What the online API computes and how it guards itself."""

    pipeline: PipelineConfig = Field(
        default_factory=lambda: PipelineConfig(decode={"max_pixels": API_MAX_PIXELS}),
        description="Operators' settings; `preset` is the default of POST /v1/avatars. Its decode.max_pixels bounds the memory a request's decoding may take "
        f"(default {API_MAX_PIXELS:,}: 4 bytes a pixel while a PNG decodes, before the photo is downscaled to decode.max_side).",
    )
    storage: str = Field("./avatar-store", description="Local folder or fsspec URI (s3://...) where avatars and their status live.")
    auth: Literal["api_key", "disabled"] = Field("api_key", description="`api_key`: every request but /healthz and /readyz (and the docs with open_docs) needs `Authorization: Bearer KEY`, each key its own tenant; `disabled`: open, one anonymous tenant, for local development only.")
    api_keys: tuple[str, ...] = Field((), description=f"Accepted keys; the comma-separated {API_KEYS_ENV} environment variable adds more.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted request body; larger ones get 413.")
    max_inflight_requests: int = Field(32, ge=1, description="Requests needing a key that one ingress replica handles at once; more get 503 at once (set Serve's max_ongoing_requests of AvatarAPI above it).")
    open_docs: bool = Field(False, description="Serve /docs, /redoc and /openapi.json without a key (otherwise they need one, like every route but /healthz and /readyz).")
    readyz_cache_s: float = Field(2.0, gt=0, description="How long one /readyz answer is reused (a not-ready one at most 1 s): the stages are asked at most once per this many seconds per ingress replica.")
    request_timeout_s: float = Field(120.0, gt=0, description="Longest wait for a synchronous stage call (track, animate); then 504, and the call is cancelled.")
    job_stage_timeout_s: float = Field(1800.0, gt=0, description="Longest wait for one stage call of an avatar job; then the call is cancelled and the job fails (reason timeout).")
    heartbeat_s: float = Field(10.0, gt=0, description="How often a queued or running avatar job refreshes `updated_at` in its status; one silent for 4 heartbeats reads `failed` (`interrupted`) and may be redone.")
    max_pending_avatars: int = Field(16, ge=1, description="Avatar jobs queued or running in one ingress replica; more get 503.")
    max_concurrent_avatars: int = Field(2, ge=1, description="Avatar jobs running at once per ingress replica (the rest wait, queued).")
    max_animation_frames: int = Field(120, ge=1, description="Most frames POST /v1/avatars/{id}/animate renders.")
    max_animation_size: int = Field(512, ge=16, description="Largest side of animation frames in pixels.")
    threads: int | None = Field(None, ge=1, description="Torch CPU threads per stage replica (default: the machine's cores).")
    track_batch: BatchSettings = Field(default_factory=BatchSettings, description="Batching of the tracking stage.")
    reconstruct_batch: BatchSettings = Field(default_factory=lambda: BatchSettings(max_batch_size=2), description="Batching of the reconstruction stage.")

    @model_validator(mode="after")
    def _keys_when_required(self) -> ServeSettings:
        if self.auth == "api_key" and not self.all_api_keys():
            raise ValueError(f"auth is 'api_key' but no key is configured: set `api_keys` or {API_KEYS_ENV}, or auth: disabled for local development.")
        return self

    def all_api_keys(self) -> tuple[str, ...]:
        extra = tuple(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())
        return tuple(k for k in self.api_keys if k) + extra

    def pipeline_for(self, preset: str | None, synthesis_mode: str | None = None) -> PipelineConfig:
        """The pipeline config of one request (its preset and synthesis mode, else the defaults)."""
        config = self.pipeline.with_preset(preset)
        if synthesis_mode is not None and synthesis_mode != config.synthesis_mode:
            config = PipelineConfig.model_validate({**config.model_dump(), "synthesis_mode": synthesis_mode})
        return config
