"""The batch avatar job on Ray Data.

    read -> decode (CPU tasks) -> track -> reconstruct -> [synthesize] -> fit -> export (actor pools) -> manifest

One actor pool per stage on a cluster with GPUs; on one without, the actor stages run in sequence
inside one pool (``stages.fuse``), so their thread pools do not fight over the same cores.

Inputs: a folder or prefix (local or ``s3://``; recursive; by extension) or a manifest file
(``.parquet``, ``.csv``, ``.jsonl``) with ``uri`` and optional ``id`` (letters, digits, ``._-``;
a bad or repeated id is a rejected row) and ``keypoints`` columns. A folder is listed in chunks
into ``OUTPUT/_work/<run_id>/inputs.parquet`` (removed when the run ends) so the driver never
holds more than ``inputs.listing_chunk`` paths; for very large collections, write that manifest
yourself.

Outputs under OUTPUT: ``avatars/<id>/`` (the export files), ``manifest/manifest.parquet`` (one
row per input in the fixed schema of :mod:`jobs.manifest`, streamed as rows finish; the driver
keeps counts, not rows), ``summary.json`` (built from those counts), ``job_config.yaml``, and
``_rows/`` (each row's outcome, written as the row finishes: what makes reruns skip finished rows
and survive lost nodes). Local paths are made absolute, so every URI in the manifest is.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator

from avatar_forge.metrics import JobMetrics
from avatar_ops.io import storage
from avatar_ops.stages.stage import chain
from jobs.config import JobConfig
from jobs.manifest import SCHEMA_VERSION, Counts, ManifestWriter, manifest_row
from jobs.stages import MANIFEST_ID, PayloadStages, decode_batch

log = logging.getLogger("avatar_forge.batch")

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def _arrow_fs(uri: str):
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


def _walk(input_uri: str, extensions: tuple[str, ...]) -> Iterator[str]:
    fs, root = storage.filesystem(input_uri)
    if not fs.isdir(root):
        raise ValueError(f"INPUT must be a folder, a prefix or a manifest ({', '.join(MANIFEST_SUFFIXES)}), got {input_uri!r}: not a folder.")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    for dirpath, _, files in fs.walk(root):
        for name in sorted(files):
            if name.lower().endswith(extensions):
                path = f"{dirpath.rstrip('/')}/{name}"
                yield path if protocol in ("file", "local") else f"{protocol}://{path}"


def write_listing(input_uri: str, output: str, config: JobConfig, run_id: str) -> str:
    """List a folder into ``OUTPUT/_work/<run_id>/inputs.parquet`` chunk by chunk (its own per
    run: two jobs on one OUTPUT never read each other's listing); returns its URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = storage.join(output, "_work", run_id, "inputs.parquet")
    schema = pa.schema([("row_index", pa.int64()), ("id", pa.string()), ("source_uri", pa.string()), ("options", pa.string())])
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "inputs.parquet")
        count = 0
        with pq.ParquetWriter(local, schema) as writer:

            def flush(paths: list[str]) -> int:
                n = len(paths)
                writer.write_table(pa.table({"row_index": range(count, count + n), "id": [""] * n, "source_uri": paths, "options": ["{}"] * n}, schema=schema))
                return n

            chunk: list[str] = []
            for path in _walk(input_uri, tuple(e.lower() for e in config.inputs.extensions)):
                chunk.append(path)
                if len(chunk) >= config.inputs.listing_chunk:
                    count += flush(chunk)
                    chunk = []
            if chunk:
                count += flush(chunk)
        if count == 0:
            raise ValueError(f"INPUT {input_uri!r} holds no files ending in {', '.join(config.inputs.extensions)}.")
        with open(local, "rb") as handle:
            storage.write_bytes(uri, handle.read())
    return uri


def _manifest_dataset(input_uri: str, num_cpus: float):
    """A user manifest -> dataset with id, source_uri (local paths made absolute against the
    driver's working directory), options. Reads ask for ``num_cpus`` (the decode stage's), not a
    whole core, so they fit beside the actor pools."""
    import ray.data

    fs, path = _arrow_fs(input_uri)
    lower = input_uri.lower()
    if lower.endswith(".parquet"):
        ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=num_cpus)
    elif lower.endswith(".csv"):
        ds = ray.data.read_csv(path, filesystem=fs, num_cpus=num_cpus)
    else:
        ds = ray.data.read_json(path, filesystem=fs, num_cpus=num_cpus)  # newline-delimited JSON
    columns = set(ds.columns())
    if "uri" not in columns:
        raise ValueError(f"the manifest {input_uri!r} needs a `uri` column; it has {sorted(columns)}.")
    extra = [c for c in columns if c not in ("id", "uri")]
    base = os.getcwd()  # the driver's: workers may run elsewhere

    def normalise(batch):
        import numpy as np

        n = len(batch["uri"])
        ids = [str(v) if v is not None and str(v) not in ("", "nan", "None") else "" for v in batch.get("id", [""] * n)]
        options = []
        for i in range(n):
            opts = {}
            for c in extra:
                value = batch[c][i]
                if value is None or (isinstance(value, float) and np.isnan(value)):
                    continue
                opts[c] = value.item() if hasattr(value, "item") else value
            options.append(json.dumps(opts, default=str))
        return {"id": np.asarray(ids, dtype=object), "source_uri": np.asarray([storage.absolute(str(u), base) for u in batch["uri"]], dtype=object), "options": np.asarray(options, dtype=object)}

    ds = ds.map_batches(normalise, batch_format="numpy", num_cpus=num_cpus)
    return ds


def read_inputs(input_uri: str, output: str, config: JobConfig, limit: int | None, run_id: str):
    """The inputs as a dataset of row_index, id, source_uri, options (a folder is listed first,
    under the run's own work folder)."""
    import ray.data

    read_cpus = config.stages.decode.num_cpus
    if input_uri.lower().endswith(MANIFEST_SUFFIXES):
        ds = _manifest_dataset(input_uri, read_cpus)
    else:
        fs, path = _arrow_fs(write_listing(input_uri, output, config, run_id))
        ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=read_cpus)
    return ds.limit(limit) if limit is not None else ds


def stage_groups(config: JobConfig) -> list[list[str]]:
    """The actor stages as they will be scheduled: one group per actor pool (see ``stages.fuse``).
    ``auto`` keeps one pool per stage when a stage asks for GPUs or the connected cluster has any."""
    kinds = list(chain(config.pipeline))
    fuse = config.stages.fuse
    if fuse == "auto":
        import ray

        wants_gpus = any(getattr(config.stages, k).num_gpus > 0 for k in kinds)
        fuse = "never" if wants_gpus or ray.cluster_resources().get("GPU", 0) > 0 else "always"
    return [list(kinds)] if fuse == "always" else [[k] for k in kinds]


#: Manifests of up to this many rows have their ids counted on the driver (at most 128 characters
#: each: a few MB). Larger ones are counted by a distributed group-by, whose shuffle starts its own
#: aggregator actors: seconds that a small job would spend on nothing else.
DRIVER_ID_COUNT_ROWS = 100_000


def duplicate_ids(inputs, rows: int) -> tuple[str, ...]:
    """Ids given to more than one of the ``rows`` input rows: counted on the driver up to
    :data:`DRIVER_ID_COUNT_ROWS` rows, else distributed (only the duplicates reach the driver).
    Rows without an id take their content id and never collide here; an id that is no valid id
    is rejected as such (``bad_id``) whether or not it is repeated."""
    from ray.data.expressions import col

    ids = inputs.select_columns(["id"]).filter(expr=col("id") != "")
    if rows <= DRIVER_ID_COUNT_ROWS:
        counted = collections.Counter(
            row_id for batch in ids.iter_batches(batch_format="pyarrow", batch_size=4096) for row_id in batch.column("id").to_pylist() if MANIFEST_ID.fullmatch(row_id)
        )  # fmt: skip
        return tuple(sorted(row_id for row_id, n in counted.items() if n > 1))
    counted = ids.groupby("id").count().rename_columns({"count()": "rows"})
    return tuple(sorted(row["id"] for row in counted.filter(expr=col("rows") > 1).iter_rows()))


def build_dataset(inputs, output: str, config: JobConfig, duplicates: tuple[str, ...] = ()):
    """decode -> track -> reconstruct -> [synthesize] -> fit -> export over the inputs (a dataset
    from :func:`read_inputs`); rows whose id is in ``duplicates`` are rejected."""
    import ray.data

    ds = inputs
    config_json = config.pipeline.model_dump_json()
    st = config.stages
    task_retries = config.ray.max_task_retries
    actor_retries = {"max_restarts": config.ray.max_restarts, "max_task_retries": config.ray.max_task_retries}
    ds = ds.map_batches(
        decode_batch, fn_kwargs={"config_json": config_json, "output": output, "duplicate_ids": duplicates}, batch_size=st.decode.batch_size,
        num_cpus=st.decode.num_cpus, batch_format="numpy", max_retries=task_retries,
    )  # fmt: skip
    for group in stage_groups(config):
        # A fused pool: the pool and batch size of its first stage, the largest CPU/GPU request of all.
        res = [getattr(st, k) for k in group]
        ds = ds.map_batches(
            PayloadStages,
            fn_constructor_kwargs={"kinds": group, "batch_sizes": [r.batch_size for r in res], "config_json": config_json, "output": output, "threads": res[0].threads},
            compute=ray.data.ActorPoolStrategy(min_size=res[0].min_actors, max_size=res[0].max_actors),
            batch_size=res[0].batch_size, num_cpus=max(r.num_cpus for r in res), num_gpus=max(r.num_gpus for r in res),
            batch_format="numpy", **actor_retries,
        )  # fmt: skip
    return ds.drop_columns(["payload", "options"])


def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    return (
        rex.WorkerCrashedError, rex.RayActorError, rex.NodeDiedError, rex.LocalRayletDiedError, rex.ObjectLostError,
        rex.OutOfMemoryError, rex.OutOfDiskError, rex.ObjectStoreFullError, rex.RpcError,
    )  # fmt: skip


def is_infrastructure_fault(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) is a lost worker, node, actor or object, or a machine
    out of memory or disk: a fault a rerun may not meet. A task's own exception is not one."""
    infrastructure = _infrastructure_errors()
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, infrastructure):
            return True
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return False


def init_ray(config: JobConfig) -> bool:
    """Connect (``ray.address`` or $RAY_ADDRESS) or start an embedded local Ray; returns whether
    this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def run_job(input_uri: str, output: str, config: JobConfig | None = None, limit: int | None = None, progress: bool = True) -> dict:
    """Run the job to completion (retrying whole attempts after infrastructure failures; finished
    rows are skipped on each retry) and return the summary. Manifest rows are written as they
    leave the pipeline; the driver keeps only their counts."""
    import ray
    import ray.data

    config = config or JobConfig()
    input_uri, output = storage.absolute(input_uri), storage.absolute(output)
    run_id = uuid.uuid4().hex[:12]
    started = time.time()
    own_ray = init_ray(config)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    storage.write_bytes(storage.join(output, "job_config.yaml"), config.to_yaml().encode())
    manifest_uri = storage.join(output, "manifest", "manifest.parquet")
    try:
        pools = stage_groups(config)
        last_error: Exception | None = None
        for attempt in range(1, config.attempts + 1):
            counts = Counts()
            try:
                inputs = read_inputs(input_uri, output, config, limit, run_id)
                total = inputs.count()
                progress_metrics = JobMetrics(total)
                duplicates = duplicate_ids(inputs, total) if input_uri.lower().endswith(MANIFEST_SUFFIXES) else ()
                with ManifestWriter(manifest_uri) as writer:
                    for row in build_dataset(inputs, output, config, duplicates).iter_rows():
                        written = manifest_row(row, run_id)
                        writer.write(written)
                        counts.add(written)
                        progress_metrics.row_done()
                break
            except ray.exceptions.RayError as err:
                if not is_infrastructure_fault(err):
                    raise  # a bug, or a task's own error: rerunning would fail the same way
                last_error = err
                log.warning("attempt %d of %d failed (%s: %s); rerunning, finished rows are kept", attempt, config.attempts, type(err).__name__, err)
        else:
            raise RuntimeError(f"the job failed {config.attempts} times; last error: {last_error}") from last_error
    finally:
        if own_ray:
            ray.shutdown()
    work = storage.join(output, "_work", run_id)
    fs, work_path = storage.filesystem(work)
    if fs.exists(work_path):
        fs.rm(work_path, recursive=True)  # this run's listing: the manifest has every row now
    wall = time.time() - started
    summary = {**summarise(counts, wall, input_uri, output, config, run_id), "manifest": manifest_uri, "actor_pools": pools}
    storage.write_bytes(storage.join(output, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary


def summarise(counts: Counts, wall: float, input_uri: str, output: str, config: JobConfig, run_id: str) -> dict:
    """The run's summary from its counts; ``passed`` is False when the share of ``failed`` rows
    is above ``config.max_failed_ratio`` (rejected rows never count)."""
    computed = counts.rows - counts.resumed
    failed_ratio = counts.failed / counts.rows if counts.rows else 0.0
    return {
        "run_id": run_id, "schema_version": SCHEMA_VERSION, "input": input_uri, "output": output, "rows": counts.rows,
        "statuses": dict(counts.statuses), "reasons": dict(counts.reasons), "resumed": counts.resumed,
        "wall_seconds": round(wall, 2), "rows_per_second": round(computed / wall, 4) if wall > 0 else None,
        "config_digest": config.pipeline.digest(), "failed_ratio": round(failed_ratio, 6), "max_failed_ratio": config.max_failed_ratio,
        "passed": failed_ratio <= config.max_failed_ratio,
    }  # fmt: skip
