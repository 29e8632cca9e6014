"""Ray Data stages, all made by one adapter from the ``avatar_ops`` operators.

A row carries its outcome so far (``status``: ``pending`` while work remains, then ``ok``,
``rejected`` or ``failed``) and the state the next stage needs, as bytes (``.npz`` / JSON /
safetensors; no pickle). A stage only works on ``pending`` rows and passes the others through, so
no row is ever dropped. An exception inside a batch is retried row by row; the row that still
raises becomes ``failed`` with the exception as its reason, and the job goes on.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from avatar_ops.io import storage
from avatar_ops.io.codec import (
    image_from_bytes,
    image_to_bytes,
    reconstruction_from_bytes,
    reconstruction_to_bytes,
    synthesis_from_bytes,
    synthesis_to_bytes,
    track_from_bytes,
    track_to_bytes,
)
from avatar_ops.io.image import decode_image
from avatar_ops.pipeline import PipelineConfig, avatar_id, build_stage, export_result, failure, fit_labels, merged_quality, run_isolated
from avatar_ops.types import Rejected

FINAL = ("ok", "rejected", "failed")


def record_uri(output: str, row_id: str, source_uri: str) -> str:
    """Where a row's final outcome is recorded (one JSON object, written atomically)."""
    key = hashlib.sha256(f"{row_id}\0{source_uri}".encode()).hexdigest()[:24]
    return storage.join(output, "_rows", f"{key}.json")


def to_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch["source_uri"])
    return [{k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in batch.items()} for i in range(n)]


def to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if key == "row_index":
            out[key] = np.asarray(values, dtype=np.int64)
        elif key == "resumed":
            out[key] = np.asarray(values, dtype=bool)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[key] = arr
    return out


def _add_seconds(row: dict, stage: str, seconds: float) -> None:
    timings = json.loads(row["seconds"] or "{}")
    timings[stage] = round(timings.get(stage, 0.0) + seconds, 4)
    row["seconds"] = json.dumps(timings)


EMPTY_PAYLOAD = {"image": b"", "track": b"", "state": b"", "labels": b""}  # a finished row carries no state


def _finish(row: dict, status: str, reason: str = "", detail: str = "") -> None:
    row.update(status=status, reason=reason, detail=detail, **EMPTY_PAYLOAD)


def _stage_metrics(stage: str):
    """The stage's metrics when running under Ray (None in a plain process, e.g. a unit test)."""
    import ray

    from jobs.metrics import stage_metrics

    return stage_metrics(stage) if ray.is_initialized() else None


def decode_batch(batch: dict[str, np.ndarray], config_json: str, output: str) -> dict[str, np.ndarray]:
    """Read, hash and decode (CPU task). Rows already finished by an earlier run with the same
    bytes and config come back ``resumed`` with their recorded outcome."""
    config = PipelineConfig.model_validate_json(config_json)
    digest = config.digest()
    rows = to_rows(batch)
    metrics = _stage_metrics("decode")
    if metrics is not None:
        metrics.started(len(rows))
    for row in rows:
        t0 = time.perf_counter()
        row.update(config_digest=digest, content_id="", seconds="{}", quality="{}", files="{}", reason="", detail="", image=b"", track=b"", state=b"", labels=b"", resumed=False, status="pending")
        try:
            data = storage.read_bytes(row["source_uri"])
        except FileNotFoundError:
            _finish(row, "failed", "not_found", f"no file at {row['source_uri']}")
            continue
        except OSError as err:
            _finish(row, "failed", "unreadable", f"{type(err).__name__}: {err}")
            continue
        row["content_id"] = avatar_id(data, digest)
        if not row["id"]:
            row["id"] = row["content_id"]
        previous = _finished_record(output, row)
        if previous is not None:
            row.update({k: previous[k] for k in ("status", "reason", "detail", "seconds", "quality", "files")}, resumed=True)
            continue
        decoded = decode_image(data, config.decode)
        if isinstance(decoded, Rejected):
            _finish(row, "rejected", decoded.reason, decoded.detail)
        else:
            row["image"] = image_to_bytes(decoded)
        _add_seconds(row, "decode", time.perf_counter() - t0)
    if metrics is not None:
        metrics.finished([(r["status"], r["reason"], json.loads(r["seconds"]).get("decode", 0.0)) for r in rows if not r["resumed"]])
    return to_batch(rows)


def _finished_record(output: str, row: dict) -> dict | None:
    uri = record_uri(output, row["id"], row["source_uri"])
    if not storage.exists(uri):
        return None
    record = json.loads(storage.read_bytes(uri))
    if record.get("content_id") != row["content_id"] or record.get("status") not in ("ok", "rejected"):
        return None  # other bytes or config, or a failure worth retrying
    files = json.loads(record.get("files") or "{}")
    if record["status"] == "ok" and not all(storage.exists(u) for u in files.values()):
        return None  # partial: redo
    return record


def _keypoints(row: dict):
    options = json.loads(row["options"] or "{}")
    if options.get("keypoints") is None:
        return None
    from avatar_ops.tracking.keypoints import parse_keypoints_json

    value = options["keypoints"]
    return parse_keypoints_json(value if isinstance(value, str) else json.dumps(value))


class OperatorStage:
    """The adapter: one callable class for every operator stage (``kind``: track, reconstruct,
    synthesize, fit or export). The operator is built once per actor."""

    def __init__(self, kind: str, config_json: str, output: str, threads: int | None = None, body=None) -> None:
        import os

        import torch

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.kind = kind
        self.output = output
        self.config = PipelineConfig.model_validate_json(config_json)
        self.body, self.op = build_stage(kind, self.config, body)  # checks `kind`
        self.metrics = _stage_metrics(kind)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = to_rows(batch)
        return to_batch(self.run_rows(rows)) if rows else batch

    def run_rows(self, rows: list[dict]) -> list[dict]:
        """The stage on rows (updated in place and returned): pending rows are processed, the
        others passed through."""
        pending = [r for r in rows if r["status"] == "pending"]
        if pending:
            if self.metrics is not None:
                self.metrics.started(len(pending))
            updates, spent = run_isolated(self.process, pending, lambda row, err: {**failure(self.kind, err), **EMPTY_PAYLOAD})
            for row, update, seconds in zip(pending, updates, spent):
                row.update(update)
                _add_seconds(row, self.kind, seconds)
            if self.metrics is not None:
                self.metrics.finished([(r["status"], r["reason"], seconds) for r, seconds in zip(pending, spent)])
        if self.kind == "export":
            for row in rows:
                if not row["resumed"] and row["status"] in FINAL:
                    self._record(row)
        return rows

    def process(self, rows: list[dict]) -> list[dict]:
        """Updates for each pending row, in order; raises only on a bug or a broken input."""
        return getattr(self, f"_{self.kind}")(rows)

    def _track(self, rows: list[dict]) -> list[dict]:
        from avatar_ops.tracking.operator import TrackInput

        results = self.op([TrackInput(image_from_bytes(r["image"]), _keypoints(r)) for r in rows])
        updates = []
        for result in results:
            if isinstance(result, Rejected):
                updates.append({"status": "rejected", "reason": result.reason, "detail": result.detail, "image": b""})
            else:
                updates.append({"track": track_to_bytes(result)})
        return updates

    def _reconstruct(self, rows: list[dict]) -> list[dict]:
        tracks = [track_from_bytes(r["track"]) for r in rows]
        results = self.op([(t, image_from_bytes(r["image"]).rgb) for t, r in zip(tracks, rows)])
        updates = []
        for result in results:
            if isinstance(result, Rejected):
                updates.append({"status": "rejected", "reason": result.reason, "detail": result.detail, "image": b"", "track": b""})
                continue
            updates.append({"state": reconstruction_to_bytes(result)})
        return updates

    def _synthesize(self, rows: list[dict]) -> list[dict]:
        recs = [reconstruction_from_bytes(r["state"], self.body.device) for r in rows]
        results = self.op([(rec.avatar, image_from_bytes(r["image"]).rgb, self.config.synthesis_mode) for rec, r in zip(recs, rows)])
        return [{"labels": synthesis_to_bytes(result)} for result in results]

    def _fit(self, rows: list[dict]) -> list[dict]:
        from avatar_ops.avatar.export import avatar_to_bytes

        recs = [reconstruction_from_bytes(r["state"], self.body.device) for r in rows]
        synthesized = [synthesis_from_bytes(r["labels"], self.body.device) if r["labels"] else None for r in rows]
        outcomes = self.op([(rec, image_from_bytes(r["image"]).rgb, fit_labels(syn)) for rec, r, syn in zip(recs, rows, synthesized)])
        updates = []
        for rec, row, outcome, syn in zip(recs, rows, outcomes, synthesized):
            quality = merged_quality(track_from_bytes(row["track"]), rec, outcome.quality, syn.summary() if syn else None)
            updates.append({"state": avatar_to_bytes(outcome.avatar)[0], "quality": json.dumps(quality), "labels": b""})
        return updates

    def _export(self, rows: list[dict]) -> list[dict]:
        from avatar_ops.avatar.export import avatar_from_bytes

        updates = []
        for row in rows:
            avatar = avatar_from_bytes(row["state"]).to(self.body.device)
            out_dir = storage.join(self.output, "avatars", row["id"])
            files = export_result(
                self.config, avatar, self.body, out_dir, row["source_uri"], track_from_bytes(row["track"]), json.loads(row["quality"]), image_from_bytes(row["image"]).rgb, row_id=row["id"]
            )
            updates.append({"status": "ok", "files": json.dumps(files), "image": b"", "track": b"", "state": b""})
        return updates

    def _record(self, row: dict) -> None:
        record = {k: row[k] for k in ("id", "source_uri", "status", "reason", "detail", "seconds", "quality", "files", "config_digest", "content_id")}
        storage.write_bytes(record_uri(self.output, row["id"], row["source_uri"]), json.dumps(record).encode())


class FusedStage:
    """Several operator stages in one actor, one after another on each batch (each stage on chunks
    of its own ``batch_size``). Each keeps its own operator, metrics, timings and per-row isolation;
    only the scheduling changes. Without GPUs, one pool per stage means every stage's actor competes
    for the same cores with its own thread pool; fused, one process holds them."""

    def __init__(self, kinds: list[str], batch_sizes: list[int], config_json: str, output: str, threads: int | None = None) -> None:
        if len(kinds) != len(batch_sizes) or not kinds:
            raise ValueError(f"`kinds` and `batch_sizes` must be non-empty and of equal length, got {kinds} and {batch_sizes}.")
        self.stages: list[tuple[OperatorStage, int]] = []
        body = None  # one body model for all of them
        for kind, size in zip(kinds, batch_sizes):
            stage = OperatorStage(kind, config_json, output, threads, body)
            body = stage.body
            self.stages.append((stage, size))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = to_rows(batch)
        if not rows:
            return batch
        for stage, size in self.stages:
            for start in range(0, len(rows), size):
                stage.run_rows(rows[start : start + size])
        return to_batch(rows)
