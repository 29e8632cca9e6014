"""Ray Data stages: rows in, :class:`~avatar_ops.stages.payload.Payload` s through the stage layer, rows out.

A row carries its outcome so far (``status``: ``pending`` while work remains, then ``ok``,
``rejected`` or ``failed``, with ``reason``, ``detail``, ``seconds``, ``quality`` and ``files``)
and, while pending, its payload as bytes (:mod:`avatar_ops.stages.codec`; no pickle). The stage
layer works only on pending payloads and isolates the item that raises, so no row is ever
dropped. What is specific to the batch job is here: reading and resuming rows, and recording
each row's outcome as it finishes (``_rows/``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from typing import Any

import numpy as np

from avatar_forge.metrics import stage_observer
from avatar_ops.io import storage
from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes
from avatar_ops.stages.config import PipelineConfig, avatar_id
from avatar_ops.stages.payload import Payload, decoded_payload, rejected
from avatar_ops.stages.stage import build_stages, failure
from avatar_ops.types import FINAL_STATUSES, Rejected

log = logging.getLogger("avatar_forge.batch")

#: What a row records of its outcome (JSON columns hold dicts; times are seconds since the epoch,
#: NaN until known).
OUTCOME_COLUMNS = ("status", "reason", "detail")
JSON_COLUMNS = ("seconds", "quality", "files")
TIME_COLUMNS = ("started_at", "finished_at")


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
        elif key in TIME_COLUMNS:
            out[key] = np.asarray(values, dtype=np.float64)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[key] = arr
    return out


def _write_payload(row: dict, payload: Payload) -> None:
    """The payload's outcome into the row's columns, and its state while stages remain; the time
    the row became final."""
    row.update({k: getattr(payload, k) for k in OUTCOME_COLUMNS}, **{k: json.dumps(getattr(payload, k)) for k in JSON_COLUMNS})
    row["payload"] = payload_to_bytes(payload) if payload.pending else b""
    if not payload.pending:
        row["finished_at"] = time.time()


def _keypoints(row: dict):
    options = json.loads(row["options"] or "{}")
    if options.get("keypoints") is None:
        return None
    from avatar_ops.tracking.keypoints import parse_keypoints_json

    value = options["keypoints"]
    return parse_keypoints_json(value if isinstance(value, str) else json.dumps(value))


#: What an id given in an input manifest may be: it names the avatar's folder under OUTPUT.
MANIFEST_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def id_problem(row_id: str, duplicates: frozenset[str] = frozenset()) -> Rejected | None:
    """Why a manifest's id cannot be used (None: it can). Empty ids are filled with the content id."""
    if not row_id:
        return None
    if not MANIFEST_ID.fullmatch(row_id):
        shown = row_id if len(row_id) <= 80 else row_id[:80] + "..."
        return Rejected("bad_id", f"id {shown!r} must be 1-128 characters of letters, digits, '.', '_' or '-', not starting with '.' or '-'")
    if row_id in duplicates:
        return Rejected("duplicate_id", f"id {row_id!r} is given to more than one row of the input manifest; every such row is rejected")
    return None


def decode_batch(batch: dict[str, np.ndarray], config_json: str, output: str, duplicate_ids: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read, hash and decode (CPU task). Rows already finished by an earlier run with the same
    bytes and config come back ``resumed`` with their recorded outcome."""
    config = PipelineConfig.model_validate_json(config_json)
    digest = config.digest()
    rows = to_rows(batch)
    metrics = stage_observer("decode")
    if metrics is not None:
        metrics.started(len(rows))
    outcomes = []  # (status, reason, seconds) of every row decoded here (not resumed)
    duplicates = frozenset(duplicate_ids)
    for row in rows:
        row.update(config_digest=digest, content_id="", resumed=False, started_at=time.time(), finished_at=math.nan)
        try:
            outcome = _decode_row(row, config, digest, output, duplicates)
        except Exception as err:  # noqa: BLE001  one row's surprise is that row's failure, never its block's
            log.error("decoding %s raised", row["source_uri"], exc_info=err)
            _write_payload(row, Payload(row["source_uri"], **failure("decode", err)))
            outcome = (row["status"], row["reason"], 0.0)
        if outcome is not None:
            outcomes.append(outcome)
    if metrics is not None:
        metrics.finished(outcomes)
    return to_batch(rows)


def _decode_row(row: dict, config: PipelineConfig, digest: str, output: str, duplicates: frozenset[str]) -> tuple[str, str, float] | None:
    """Read, hash and decode one row in place; its (status, reason, seconds), or None when an
    earlier run finished it (resumed)."""
    problem = id_problem(row["id"], duplicates)
    if problem is not None:
        _write_payload(row, Payload(row["source_uri"], **rejected(problem)))
        return row["status"], row["reason"], 0.0
    try:
        data = storage.read_bytes_at_most(row["source_uri"], config.decode.max_bytes + 1)
    except FileNotFoundError:
        _write_payload(row, Payload(row["source_uri"], status="failed", reason="not_found", detail=f"no file at {row['source_uri']}"))
        return row["status"], row["reason"], 0.0
    except OSError as err:
        _write_payload(row, Payload(row["source_uri"], status="failed", reason="unreadable", detail=f"{type(err).__name__}: {err}"))
        return row["status"], row["reason"], 0.0
    row["content_id"] = avatar_id(data, digest)
    if not row["id"]:
        row["id"] = row["content_id"]
    previous = _finished_record(output, row)
    if previous is not None:
        row.update({k: previous[k] for k in (*OUTCOME_COLUMNS, *JSON_COLUMNS)}, payload=b"", resumed=True)
        row.update({k: float(previous.get(k, math.nan)) for k in TIME_COLUMNS})  # records older than the times have none
        return None
    try:
        keypoints = _keypoints(row)
    except ValueError as err:
        _write_payload(row, Payload(row["source_uri"], status="rejected", reason="bad_keypoints", detail=str(err)))
        return row["status"], row["reason"], 0.0
    payload = decoded_payload(row["source_uri"], data, config, id=row["id"], out_dir=storage.join(output, "avatars", row["id"]), keypoints=keypoints)
    _write_payload(row, payload)
    return payload.status, payload.reason, payload.seconds.get("decode", 0.0)


def _finished_record(output: str, row: dict) -> dict | None:
    try:
        record = json.loads(storage.read_bytes(record_uri(output, row["id"], row["source_uri"])))
    except FileNotFoundError:
        return None
    if record.get("content_id") != row["content_id"] or record.get("status") not in ("ok", "rejected"):
        return None  # other bytes or config, or a failure worth retrying
    files = json.loads(record.get("files") or "{}")
    if record["status"] == "ok" and not all(storage.exists(u) for u in files.values()):
        return None  # partial: redo
    return record


class PayloadStages:
    """One or several operator stages in one actor (``kinds``, each on chunks of its own batch
    size), their operators built once, on one body model. One pool per stage on GPUs; on a
    machine without, fused, so their thread pools do not fight over the same cores.

    The operators (models) are loaded on the first batch with work to do: a rerun whose rows are
    all finished never loads them."""

    def __init__(self, kinds: list[str], batch_sizes: list[int], config_json: str, output: str, threads: int | None = None) -> None:
        import os

        import torch

        if len(kinds) != len(batch_sizes) or not kinds:
            raise ValueError(f"`kinds` and `batch_sizes` must be non-empty and of equal length, got {kinds} and {batch_sizes}.")
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.output = output
        self.kinds, self.batch_sizes = list(kinds), list(batch_sizes)
        self.config = PipelineConfig.model_validate_json(config_json)
        self._stages: list | None = None
        self.records = "export" in kinds  # the last pool records every row's outcome

    @property
    def stages(self) -> list:
        """[(stage, batch size)], built on first use."""
        if self._stages is None:
            self._stages = list(zip(build_stages(self.config, self.kinds, stage_observer), self.batch_sizes))
        return self._stages

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = to_rows(batch)
        if not rows:
            return batch
        pending = [row for row in rows if row["status"] == "pending"]
        if pending:
            device = self.stages[0][0].body.device
            live = [(row, payload_from_bytes(row["payload"], device)) for row in pending]
            payloads = [p for _, p in live]
            for stage, size in self.stages:
                for start in range(0, len(payloads), size):
                    stage.run(payloads[start : start + size])
            for row, payload in live:
                _write_payload(row, payload)
        if self.records:
            for row in rows:
                if not row["resumed"] and row["status"] in FINAL_STATUSES:
                    self._record(row)
        return to_batch(rows)

    def _record(self, row: dict) -> None:
        record = {k: row[k] for k in ("id", "source_uri", *OUTCOME_COLUMNS, *JSON_COLUMNS, *TIME_COLUMNS, "config_digest", "content_id")}
        storage.write_bytes(record_uri(self.output, row["id"], row["source_uri"]), json.dumps(record).encode())
