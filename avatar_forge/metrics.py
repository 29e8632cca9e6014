"""Prometheus metrics of the batch job and the online API, exported through Ray's metrics agent
(``ray.util.metrics``), so one scrape of the Ray nodes covers both. Ray prefixes the names with
``ray_``: ``avatar_rows`` is scraped as ``ray_avatar_rows_total``.

Recorded by the operator adapters (``jobs/stages.py`` for Ray Data, ``serve/adapter.py`` for
Serve), the Serve ingress and the batch driver:

- ``avatar_rows_total{stage, status, reason}``: rows (photos) a stage finished, by outcome
  (``ok`` = passed on, ``rejected``, ``failed``) and reason class (``none``, ``bad_input``,
  ``no_person``, ``fit``, ``exception``, ...: a bounded set, never an id);
- ``avatar_stage_latency_seconds{stage}``: seconds per row; ``avatar_stage_batch_size{stage}``:
  rows per operator call; ``avatar_stage_rows_in_flight{stage}``;
- ``avatar_gpu_utilization_ratio{stage, gpu}``, ``avatar_gpu_memory_used_bytes{stage, gpu}``,
  ``avatar_gpu_memory_total_bytes{stage, gpu}`` from NVML (and torch's allocator:
  ``avatar_gpu_torch_allocated_bytes``), sampled in every stage process that sees a GPU; absent
  where there is none;
- ``avatar_serve_requests_in_flight``, ``avatar_serve_rejected_total{reason}`` (``overload``,
  ``auth``, ``too_large``), ``avatar_serve_avatar_jobs_total{status}``,
  ``avatar_serve_avatar_jobs_pending``;
- ``avatar_job_rows{kind=total|done}``, ``avatar_job_throughput_rows_per_second``,
  ``avatar_job_eta_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time

from avatar_ops.types import FAILURE_REASONS, REJECT_REASONS

log = logging.getLogger("avatar_forge.metrics")

LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]

#: Reasons -> bounded reason classes for labels (defined with the reasons; anything unknown is ``other``).
REASON_CLASSES = {"": "none", **REJECT_REASONS, **FAILURE_REASONS}


def reason_class(reason: str) -> str:
    return REASON_CLASSES.get(reason or "", "other")


_lock = threading.RLock()  # stage_metrics builds metrics (which take it) while holding it
_metrics: dict[str, object] = {}


def _metric(kind: str, name: str, description: str, tags: tuple[str, ...], **kw):
    """One metric object per process and name (Ray registers them with the node's agent)."""
    from ray.util import metrics

    with _lock:
        if name not in _metrics:
            _metrics[name] = getattr(metrics, kind)(name, description=description, tag_keys=tags, **kw)
        return _metrics[name]


_stages: dict[str, StageMetrics] = {}


def stage_metrics(stage: str) -> StageMetrics:
    """The stage's metrics in this process: one object (and one GPU sampler) per stage and
    process, however often a task function asks for it."""
    with _lock:
        if stage not in _stages:
            _stages[stage] = StageMetrics(stage)
        return _stages[stage]


def stage_observer(stage: str) -> StageMetrics | None:
    """The stage's metrics inside a Ray worker or replica; None in a plain process (a unit test, a
    script), where there is no metrics agent and creating a metric would start a Ray of its own."""
    import ray

    return stage_metrics(stage) if ray.is_initialized() else None


class StageMetrics:
    """What one operator stage (a Ray Data actor or a Serve replica) records. Use
    :func:`stage_metrics` to get it."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.rows = _metric("Counter", "avatar_rows", "Rows a stage finished, by outcome and reason class.", ("stage", "status", "reason"))
        self.latency = _metric("Histogram", "avatar_stage_latency_seconds", "Seconds per row in a stage.", ("stage",), boundaries=LATENCY_BUCKETS)
        self.batch = _metric("Histogram", "avatar_stage_batch_size", "Rows per operator call.", ("stage",), boundaries=BATCH_BUCKETS)
        self.in_flight = _metric("Gauge", "avatar_stage_rows_in_flight", "Rows inside an operator call now.", ("stage",))
        self.in_flight.set(0, tags={"stage": stage})
        self.gpu = GpuSampler(stage)

    def started(self, rows: int) -> None:
        self.batch.observe(rows, tags={"stage": self.stage})
        self.in_flight.set(rows, tags={"stage": self.stage})

    def finished(self, outcomes: list[tuple[str, str, float]]) -> None:
        """(status, reason, seconds) per row; status ``pending`` (passed on) counts as ``ok``."""
        for status, reason, seconds in outcomes:
            status = "ok" if status == "pending" else status
            self.rows.inc(1, tags={"stage": self.stage, "status": status, "reason": reason_class(reason)})
            self.latency.observe(seconds, tags={"stage": self.stage})
        self.in_flight.set(0, tags={"stage": self.stage})


class GpuSampler:
    """Samples NVML utilisation and memory of the GPUs Ray assigned to this process
    (``ray.get_gpu_ids()``), every ``period_s``, into gauges labelled with the owning stage. Does
    nothing (no series at all) in a process that holds no GPU."""

    def __init__(self, stage: str, period_s: float = 5.0) -> None:
        self.stage = stage
        self.period_s = period_s
        self._handles = self._nvml_handles()
        if self._handles:
            self.util = _metric("Gauge", "avatar_gpu_utilization_ratio", "GPU busy fraction (NVML).", ("stage", "gpu"))
            self.used = _metric("Gauge", "avatar_gpu_memory_used_bytes", "GPU memory in use (NVML).", ("stage", "gpu"))
            self.total = _metric("Gauge", "avatar_gpu_memory_total_bytes", "GPU memory (NVML).", ("stage", "gpu"))
            self.torch_alloc = _metric("Gauge", "avatar_gpu_torch_allocated_bytes", "Memory held by torch's allocator.", ("stage", "gpu"))
            threading.Thread(target=self._loop, name=f"gpu-metrics-{stage}", daemon=True).start()

    @staticmethod
    def _nvml_handles() -> list:
        """(label, handle) of the GPUs assigned to this process; NVML sees every GPU of the node,
        so a CPU-only stage on a GPU node must not report them as its own."""
        import ray

        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        if not gpu_ids:
            return []
        try:
            import pynvml
        except ImportError:
            return []
        try:
            pynvml.nvmlInit()
            return [(g, pynvml.nvmlDeviceGetHandleByIndex(int(g)) if g.isdigit() else pynvml.nvmlDeviceGetHandleByUUID(g)) for g in gpu_ids]
        except pynvml.NVMLError as err:  # no driver / no device: no GPU metrics, as documented
            log.debug("no NVML: %s", err)
            return []

    def sample(self) -> None:
        import pynvml
        import torch

        for index, handle in self._handles:
            tags = {"stage": self.stage, "gpu": index}
            self.util.set(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0, tags=tags)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            self.used.set(float(memory.used), tags=tags)
            self.total.set(float(memory.total), tags=tags)
        if self._handles and torch.cuda.is_available():  # torch numbers the assigned GPUs 0..n-1
            for local, (index, _) in enumerate(self._handles[: torch.cuda.device_count()]):
                self.torch_alloc.set(float(torch.cuda.memory_allocated(local)), tags={"stage": self.stage, "gpu": index})

    def _loop(self) -> None:
        import pynvml

        while True:
            try:
                self.sample()
            except pynvml.NVMLError as err:
                log.warning("GPU metrics sample failed: %s", err)
            time.sleep(self.period_s)


class ServeMetrics:
    """The ingress's own figures."""

    def __init__(self) -> None:
        self.in_flight = _metric("Gauge", "avatar_serve_requests_in_flight", "/v1 requests being handled by the ingress.", ())
        self.rejected = _metric("Counter", "avatar_serve_rejected", "Requests turned away before any work, by reason.", ("reason",))
        self.jobs = _metric("Counter", "avatar_serve_avatar_jobs", "Avatar jobs by status (queued when created, then their final status).", ("status",))
        self.pending = _metric("Gauge", "avatar_serve_avatar_jobs_pending", "Avatar jobs queued or running in the ingress.", ())


class JobMetrics:
    """The batch driver's progress figures."""

    def __init__(self, total: int) -> None:
        self.rows = _metric("Gauge", "avatar_job_rows", "Rows of the running job: total, done.", ("kind",))
        self.throughput = _metric("Gauge", "avatar_job_throughput_rows_per_second", "Rows finished per second since the job started.", ())
        self.eta = _metric("Gauge", "avatar_job_eta_seconds", "Expected seconds left at the current throughput.", ())
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.rows.set(total, tags={"kind": "total"})
        self.rows.set(0, tags={"kind": "done"})

    def row_done(self) -> None:
        self.done += 1
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        # Every series is set again on each update: Ray's agent drops gauge series that its
        # emitter stopped refreshing, and a total set once at the start was lost that way.
        self.rows.set(self.total, tags={"kind": "total"})
        self.rows.set(self.done, tags={"kind": "done"})
        self.throughput.set(rate)
        self.eta.set(max(self.total - self.done, 0) / rate)
