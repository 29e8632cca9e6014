"""The one adapter that turns an ``avatar_ops`` operator into a Serve deployment.

Every stage deployment (tracking, reconstruction, synthesis, fitting, export) is this class with another
``kind``. Requests are grouped by ``@serve.batch`` and the operator runs in a worker thread, so
the replica's event loop stays free (health checks, queued requests). State travels between
deployments as bytes (:mod:`avatar_ops.io.codec`), exactly as between the batch job's stages.

Every call answers a dict: ``{"status": "ok", ...}``, ``{"status": "rejected", "reason",
"detail"}`` for a bad input, or ``{"status": "failed", "reason": "exception", "detail"}`` when
the operator raised on that item (the other items of its batch are not affected).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from ray import serve

from avatar_ops.io import storage
from avatar_ops.io.codec import (
    image_from_bytes,
    reconstruction_from_bytes,
    reconstruction_to_bytes,
    synthesis_from_bytes,
    synthesis_to_bytes,
    track_from_bytes,
    track_to_bytes,
)
from avatar_ops.pipeline import PipelineConfig, build_stage, export_result, failure, fit_labels, merged_quality, run_isolated, stage_operator
from avatar_ops.types import Rejected



def _rejected(result: Rejected) -> dict:
    return {"status": "rejected", "reason": result.reason, "detail": result.detail}


class OperatorDeployment:
    """A replica of one operator stage.

    Args:
        kind: ``track``, ``reconstruct``, ``synthesize``, ``fit`` or ``export``.
        pipeline_json: the :class:`~avatar_ops.pipeline.PipelineConfig` (JSON); a request's
            ``preset`` swaps in another quality preset.
        batch_json: ``{"max_batch_size", "batch_wait_timeout_s"}`` for ``@serve.batch`` (JSON);
            None for one request per call.
        threads: torch CPU threads (default: every core).
    """

    def __init__(self, kind: str, pipeline_json: str, batch_json: str | None = None, threads: int | None = None) -> None:
        import torch

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.kind = kind
        self.config = PipelineConfig.model_validate_json(pipeline_json)
        self.body, self.op = build_stage(kind, self.config)  # weights load here, once
        self._ops: dict[str, Any] = {self.config.preset: self.op}
        from jobs.metrics import stage_metrics

        self.metrics = stage_metrics(kind)
        batch = json.loads(batch_json) if batch_json else {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
        self.run.set_max_batch_size(batch["max_batch_size"])
        self.run.set_batch_wait_timeout_s(batch["batch_wait_timeout_s"])

    def _operator(self, preset: str):
        """The reconstruction or fitting operator of one preset (built on first use; cheap)."""
        if preset not in self._ops:
            self._ops[preset] = stage_operator(self.kind, self.config.with_preset(preset), self.body)
        return self._ops[preset]

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it."""
        self.body.check_health()

    async def ready(self) -> str:
        return self.kind

    async def __call__(self, *args: Any) -> dict:
        return await self.run(args)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def run(self, items: list[tuple]) -> list[dict]:
        return await asyncio.to_thread(self._guarded, items)

    def _guarded(self, items: list[tuple]) -> list[dict]:
        """The whole batch at once; if it raises, item by item so only the culprit fails."""
        self.metrics.started(len(items))
        out, spent = run_isolated(self._process, items, lambda item, err: failure(self.kind, err))
        self.metrics.finished([(r["status"], r.get("reason", ""), seconds) for r, seconds in zip(out, spent)])
        return out

    def _process(self, items: list[tuple]) -> list[dict]:
        return getattr(self, f"_{self.kind}")(items)

    def _track(self, items: list[tuple[bytes, str | None]]) -> list[dict]:
        """(image bytes, keypoints JSON or None) -> ``track`` bytes."""
        from avatar_ops.tracking.keypoints import parse_keypoints_json
        from avatar_ops.tracking.operator import TrackInput

        inputs = [TrackInput(image_from_bytes(image), parse_keypoints_json(kp) if kp else None) for image, kp in items]
        return [_rejected(r) if isinstance(r, Rejected) else {"status": "ok", "track": track_to_bytes(r)} for r in self.op(inputs)]

    def _reconstruct(self, items: list[tuple[bytes, bytes, str]]) -> list[dict]:
        """(track bytes, image bytes, preset) -> ``state`` bytes, grouped by preset."""
        out: list[dict | None] = [None] * len(items)
        for preset in {p for _, _, p in items}:
            index = [i for i, item in enumerate(items) if item[2] == preset]
            results = self._operator(preset)([(track_from_bytes(items[i][0]), image_from_bytes(items[i][1]).rgb) for i in index])
            for i, r in zip(index, results):
                out[i] = _rejected(r) if isinstance(r, Rejected) else {"status": "ok", "state": reconstruction_to_bytes(r)}
        return out  # type: ignore[return-value]

    def _synthesize(self, items: list[tuple[bytes, bytes, str]]) -> list[dict]:
        """(state bytes, image bytes, mode) -> pseudo-label ``labels`` bytes."""
        recs = [reconstruction_from_bytes(state, self.body.device) for state, _, _ in items]
        results = self.op([(rec.avatar, image_from_bytes(image).rgb, mode) for rec, (_, image, mode) in zip(recs, items)])
        return [{"status": "ok", "labels": synthesis_to_bytes(r)} for r in results]

    def _fit(self, items: list[tuple[bytes, bytes, bytes, str, bytes | None]]) -> list[dict]:
        """(state, track, image, preset, labels or None) bytes -> fitted ``avatar`` bytes and ``quality``."""
        from avatar_ops.avatar.export import avatar_to_bytes

        out = []
        for state, track, image, preset, labels in items:
            rec = reconstruction_from_bytes(state, self.body.device)
            synthesized = synthesis_from_bytes(labels, self.body.device) if labels else None
            outcome = self._operator(preset)([(rec, image_from_bytes(image).rgb, fit_labels(synthesized))])[0]
            quality = merged_quality(track_from_bytes(track), rec, outcome.quality, synthesized.summary() if synthesized else None)
            out.append({"status": "ok", "avatar": avatar_to_bytes(outcome.avatar)[0], "quality": quality})
        return out

    def _export(self, items: list[tuple[bytes, bytes, bytes, dict, str, str, str]]) -> list[dict]:
        """(avatar bytes, track bytes, image bytes, quality, preset, out_dir, source) -> ``files``."""
        from avatar_ops.avatar.export import avatar_from_bytes

        out = []
        for avatar, track, image, quality, preset, out_dir, source in items:
            config = self.config.with_preset(preset)
            model = avatar_from_bytes(avatar).to(self.body.device)
            files = export_result(config, model, self.body, out_dir, source, track_from_bytes(track), quality, image_from_bytes(image).rgb)
            out.append({"status": "ok", "files": files})
        return out

    async def animate(self, avatar_uri: str, motion: str | bytes, fmt: str, size: int, max_frames: int) -> bytes:
        """Frames of the stored avatar following ``motion`` (bundled clip name or .npz bytes),
        encoded as GIF or MP4."""
        return await asyncio.to_thread(self._animate, avatar_uri, motion, fmt, size, max_frames)

    def _animate(self, avatar_uri: str, motion: str | bytes, fmt: str, size: int, max_frames: int) -> bytes:
        from avatar_ops.avatar.animate import animate
        from avatar_ops.avatar.export import avatar_from_bytes, gif_bytes, mp4_bytes
        from avatar_ops.motion import bundled_clips, load_motion

        if self.kind != "export":
            raise ValueError(f"animate runs on the export stage, not on {self.kind!r}.")
        if isinstance(motion, str) and motion not in bundled_clips():
            raise ValueError(f"`motion` must be a bundled clip ({', '.join(bundled_clips())}) or .npz bytes, got {motion!r}.")
        avatar = avatar_from_bytes(storage.read_bytes(avatar_uri)).to(self.body.device)
        clip = load_motion(motion)
        frames = animate(avatar, self.body, clip, size=size, max_frames=max_frames)
        fps = min(clip.fps, 30.0)
        return gif_bytes(frames, fps=fps) if fmt == "gif" else mp4_bytes(frames, fps=fps)
