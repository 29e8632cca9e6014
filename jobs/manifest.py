"""The batch job's manifest: one row per input in a fixed, versioned schema, streamed to Parquet
as rows leave the pipeline. The driver keeps counts (:class:`Counts`), never rows, so its memory
does not grow with the job.

The schema does not depend on the data: a run where every row was rejected has the same column
types as one where every row is ``ok``, so manifests of many runs concatenate without casting.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from avatar_ops.io import storage
from avatar_ops.tracking.facing import facing_of
from avatar_ops.types import STAGE_KINDS

log = logging.getLogger("avatar_forge.batch")

#: Bumped whenever a column is added, removed or changes type.
SCHEMA_VERSION = 1
#: Stages timed per row (seconds), with their sum.
SECONDS_FIELDS = ("decode", *STAGE_KINDS, "total")
#: Named files whose URIs are also columns of their own.
URI_COLUMNS = {"bundle_uri": "avatar.safetensors", "ply_uri": "avatar.ply", "preview_uri": "preview.png"}

_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("schema_version", "int32", "Version of this schema (jobs.manifest.SCHEMA_VERSION)."),
    ("run_id", "string", "The run that wrote this manifest (also in summary.json)."),
    ("id", "string", "The avatar id: the input manifest's `id`, else the content id."),
    ("source_uri", "string", "The input photo, as an absolute path or a URI."),
    ("status", "string", "ok, rejected (the input cannot make an avatar) or failed (an error of ours or of the infrastructure)."),
    ("reason", "string", "Machine-readable reason of a rejected or failed row; empty when ok."),
    ("detail", "string", "What was wrong, for people; on an ok row, what was read with trouble (an unreadable EXIF orientation), else empty."),
    ("avatar_uri", "string", "Folder holding the avatar's files (null unless ok)."),
    ("bundle_uri", "string", "avatar.safetensors, the animatable avatar (null unless ok)."),
    ("ply_uri", "string", "avatar.ply, the posed splats (null unless ok)."),
    ("preview_uri", "string", "preview.png (null unless ok)."),
    ("files", "map<string,string>", "Every file written for the row: name -> absolute URI."),
    ("seconds", "struct", "Seconds spent per stage (null where a stage did not run) and their total."),
    ("quality", "map<string,double>", "Every quality figure of the stages, prefixed by stage (track_mask_iou, fit_psnr, ...)."),
    ("psnr", "double", "The fitted avatar's PSNR against the photo (dB)."),
    ("mask_iou", "double", "Overlap of the fitted body with the person mask."),
    ("facing", "string", "front, side or back: how the person faces the camera."),
    ("started_at", "timestamp", "When the row's work started (UTC); for a resumed row, when it first did."),
    ("finished_at", "timestamp", "When the row reached its final status (UTC)."),
    ("config_digest", "string", "Digest of the pipeline config (part of the avatar id)."),
    ("content_id", "string", "Digest of the input bytes and the config; empty when the input could not be read."),
    ("resumed", "bool", "True when an earlier run had finished the row and it was not recomputed."),
)
#: Column names, in order.
MANIFEST_COLUMNS = tuple(name for name, _, _ in _COLUMNS)


def manifest_schema():
    """The manifest's Arrow schema (each field's description in its metadata)."""
    import pyarrow as pa

    types = {
        "int32": pa.int32(), "int64": pa.int64(), "string": pa.string(), "double": pa.float64(), "bool": pa.bool_(),
        "timestamp": pa.timestamp("ms", tz="UTC"), "map<string,string>": pa.map_(pa.string(), pa.string()),
        "map<string,double>": pa.map_(pa.string(), pa.float64()), "struct": pa.struct([(k, pa.float64()) for k in SECONDS_FIELDS]),
    }  # fmt: skip
    fields = [pa.field(name, types[kind], metadata={"description": text}) for name, kind, text in _COLUMNS]
    return pa.schema(fields, metadata={"avatar_forge.schema_version": str(SCHEMA_VERSION)})


def _timestamp(value: Any):
    import datetime

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return datetime.datetime.fromtimestamp(float(value), tz=datetime.timezone.utc)


def manifest_row(row: dict, run_id: str) -> dict:
    """A pipeline output row -> one manifest row (a dict keyed by :data:`MANIFEST_COLUMNS`)."""
    files = json.loads(row.get("files") or "{}")
    seconds = json.loads(row.get("seconds") or "{}")
    quality = {k: float(v) for k, v in json.loads(row.get("quality") or "{}").items()}
    bundle = files.get(URI_COLUMNS["bundle_uri"])
    return {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "id": row["id"],
        "source_uri": row["source_uri"], "status": row["status"], "reason": row["reason"], "detail": row["detail"],
        "avatar_uri": bundle.rsplit("/", 1)[0] if bundle else None, **{col: files.get(name) for col, name in URI_COLUMNS.items()},
        "files": files,
        "seconds": {**{k: seconds.get(k) for k in SECONDS_FIELDS[:-1]}, "total": round(sum(seconds.values()), 4)},
        "quality": quality, "psnr": quality.get("fit_psnr"), "mask_iou": quality.get("track_mask_iou"),
        "facing": facing_of(quality["track_facing_angle_deg"]) if "track_facing_angle_deg" in quality else None,
        "started_at": _timestamp(row.get("started_at")), "finished_at": _timestamp(row.get("finished_at")),
        "config_digest": row["config_digest"], "content_id": row.get("content_id") or "", "resumed": bool(row["resumed"]),
    }  # fmt: skip


class Counts:
    """What the driver keeps of the rows it has written: counts by status and reason."""

    def __init__(self) -> None:
        self.rows = 0
        self.resumed = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()

    def add(self, row: dict) -> None:
        self.rows += 1
        self.resumed += bool(row["resumed"])
        self.statuses[row["status"]] += 1
        if row["status"] != "ok":
            self.reasons[f"{row['status']}:{row['reason']}"] += 1

    @property
    def failed(self) -> int:
        return self.statuses.get("failed", 0)


class ManifestWriter:
    """Streams manifest rows to one Parquet file at ``uri``, a row group every ``row_group_rows``.

    The file appears only when :meth:`close` succeeds: a local file is written under a temporary
    name and renamed; an object store's multipart upload completes on close and is aborted by
    :meth:`abort`. Use as a context manager: leaving it by an exception aborts.
    """

    def __init__(self, uri: str, row_group_rows: int = 4096) -> None:
        import pyarrow.parquet as pq

        if row_group_rows < 1:
            raise ValueError(f"`row_group_rows` must be at least 1, got {row_group_rows}.")
        self.uri, self.row_group_rows = uri, row_group_rows
        self.schema = manifest_schema()
        self._buffer: list[dict] = []
        self._local_tmp: str | None = None
        fs, path = storage.filesystem(uri)
        if storage.is_local(uri):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd, self._local_tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
            self._file = os.fdopen(fd, "wb")
            self._target = path
        else:
            self._file = fs.open(path, "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema)

    def write(self, row: dict) -> None:
        """Add one manifest row (from :func:`manifest_row`)."""
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self._buffer = []

    def close(self) -> str:
        """Write what is buffered, the footer, and publish the file; returns its URI."""
        self._flush()
        self._writer.close()
        if self._local_tmp is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self._local_tmp, storage.file_mode())
            os.replace(self._local_tmp, self._target)
            self._local_tmp = None
        else:
            self._file.close()
        return self.uri

    def abort(self) -> None:
        """Drop the file being written: nothing appears at ``uri``."""
        self._buffer = []
        try:
            self._writer.close()  # only the temporary file or the pending upload gets the footer
        except (OSError, ValueError) as err:
            log.warning("closing the aborted manifest writer of %s: %s", self.uri, err)
        if self._local_tmp is not None:
            self._file.close()
            os.unlink(self._local_tmp)
            self._local_tmp = None
        elif hasattr(self._file, "discard"):
            self._file.discard()  # aborts an S3 multipart upload; the file is unusable after it
            self._file.closed = True  # so that garbage collection does not try to complete it

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
