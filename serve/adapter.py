"""The one adapter that turns a stage of :mod:`avatar_ops.stages` into a Serve deployment.

Every stage deployment (track, reconstruct, synthesize, fit, export) is this class with another
``kind``. A call takes one payload as bytes (:mod:`avatar_ops.stages.codec`, exactly what the
batch job's rows carry) and answers it, advanced by the stage: still ``pending`` for the next
stage, or finished (``ok``; ``rejected`` with the reason for a bad input; ``failed`` with reason
``exception`` when the stage raised on that item, the other items of its batch unaffected).
Requests are grouped by ``@serve.batch`` and the stage runs in a worker thread, so the replica's
event loop stays free (health checks, queued requests).

Every call may carry a ``deadline`` (a ``time.time()`` epoch) set by the ingress from its own
timeout: past it the call is cancelled here on the stage (:func:`within`), whether or not the
ingress's ``DeploymentResponse.cancel`` arrived (Ray Serve's cancellation is best effort, and a
cancel racing the request's assignment to a replica can be lost).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from ray import serve

from avatar_forge.metrics import stage_observer
from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes
from avatar_ops.stages.config import PipelineConfig
from avatar_ops.stages.stage import Stage

T = TypeVar("T")


async def within(deadline: float | None, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, cancelled past ``deadline`` (a ``time.time()`` epoch; None: no limit).

    Raises:
        TimeoutError: the deadline passed (before ``work`` started, it never starts).
    """
    if deadline is None:
        return await work
    remaining = deadline - time.time()
    if remaining <= 0:
        work.close()
        raise TimeoutError(f"the call's deadline passed {-remaining:.3f} s before it reached the stage")
    return await asyncio.wait_for(work, remaining)


class StageDeployment:
    """A replica of one stage.

    Args:
        kind: ``track``, ``reconstruct``, ``synthesize``, ``fit`` or ``export``.
        pipeline_json: the :class:`~avatar_ops.stages.config.PipelineConfig` (JSON); a payload's
            ``preset`` and ``synthesis_mode`` override its defaults.
        batch_json: ``{"max_batch_size", "batch_wait_timeout_s"}`` for ``@serve.batch`` (JSON);
            None for one request per call.
        threads: torch CPU threads (default: every core).
    """

    def __init__(self, kind: str, pipeline_json: str, batch_json: str | None = None, threads: int | None = None) -> None:
        import torch

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.stage = Stage(kind, PipelineConfig.model_validate_json(pipeline_json), observer=stage_observer(kind))  # weights load here, once
        batch = json.loads(batch_json) if batch_json else {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
        self.run.set_max_batch_size(batch["max_batch_size"])
        self.run.set_batch_wait_timeout_s(batch["batch_wait_timeout_s"])

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it."""
        self.stage.check_health()

    async def ready(self) -> str:
        return self.stage.kind

    async def __call__(self, payload: bytes, deadline: float | None = None) -> bytes:
        return await within(deadline, self.run(payload))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def run(self, payloads: list[bytes]) -> list[bytes]:
        return await asyncio.to_thread(self.run_bytes, payloads)

    def run_bytes(self, payloads: list[bytes]) -> list[bytes]:
        """The stage on payloads as bytes, answered as bytes, in order."""
        items = [payload_from_bytes(data, self.stage.body.device) for data in payloads]
        return [payload_to_bytes(p) for p in self.stage.run(items)]

    async def animate(self, avatar_uri: str, motion: str | bytes, fmt: str, size: int, max_frames: int, deadline: float | None = None) -> bytes:
        """Frames of the stored avatar following ``motion`` (bundled clip name or .npz bytes),
        encoded as GIF or MP4 (on the export stage, which holds the body)."""
        from avatar_ops.avatar.animate import animation_bytes

        if self.stage.kind != "export":
            raise ValueError(f"animate runs on the export stage, not on {self.stage.kind!r}.")
        return await within(deadline, asyncio.to_thread(animation_bytes, avatar_uri, self.stage.body, motion, fmt, size, max_frames))
