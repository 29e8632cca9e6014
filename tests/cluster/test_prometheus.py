"""Metrics end to end: a real Prometheus (Debian's package, fetched by `make test`) runs with
cluster/prometheus/prometheus.yml and alerts.yml, discovers the local Ray through Ray's
service-discovery file, scrapes the metrics agent on 127.0.0.1 while a small batch job runs, and its
query API must report the stage counters, latency histograms and job progress with the right values
(rows counted = rows in the manifest), evaluate the alert rules without error, and answer every
dashboard query for the cluster the relabelling names."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from jobs.config import JobConfig
from tests.cluster.prom import selectors
from tests.inputs import bad_files
from tests.jobs.test_batch import FAST
from tests.net import free_port

REPO = Path(__file__).resolve().parents[2]


def _prometheus_binary() -> str | None:
    for candidate in (os.environ.get("PROMETHEUS_BIN"), str(REPO / ".venv" / "prometheus" / "prometheus"), shutil.which("prometheus")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def prometheus_and_ray(tmp_path_factory):
    binary = _prometheus_binary()
    if binary is None:
        pytest.skip("no Prometheus binary: `make test` fetches Debian's `prometheus` package into .venv/prometheus (apt-get download); set PROMETHEUS_BIN otherwise")
    import ray

    metrics_port = free_port()
    # The dashboard writes the service-discovery file Prometheus follows.
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, _metrics_export_port=metrics_port, _system_config={"metrics_report_interval_ms": 1000})
    work = tmp_path_factory.mktemp("prometheus")
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    # cluster/prometheus/prometheus.yml as shipped (its relabelling, its rule file), pointed at this
    # session's discovery file, with second-long intervals.
    config = yaml.safe_load((REPO / "cluster" / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["file_sd_configs"] = [{"files": [str(session / "prom_metrics_service_discovery.json")], "refresh_interval": "1s"}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(REPO / "cluster" / "prometheus" / "alerts.yml", work / "alerts.yml")
    web = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=(work / "prometheus.log").open("w"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/-/ready", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus did not start: {(work / 'prometheus.log').read_text()[-2000:]}")
        yield base, metrics_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        ray.shutdown()


def _query(base: str, expr: str) -> dict[tuple, float]:
    r = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in r.json()["data"]["result"]}


def _wait_value(base: str, expr: str, expected: float, limit_s: float = 120) -> float:
    deadline = time.monotonic() + limit_s
    value = None
    while time.monotonic() < deadline:
        result = _query(base, expr)
        value = sum(result.values()) if result else None
        if value is not None and abs(value - expected) < 1e-6:
            return value
        time.sleep(1)
    pytest.fail(f"{expr} = {value}, expected {expected} within {limit_s} s")


def _rule_health(base: str, names: set[str], limit_s: float = 30) -> dict[str, str]:
    """``{rule: health}`` once Prometheus has loaded and evaluated the rules ``names`` (or at the limit)."""
    deadline = time.monotonic() + limit_s
    while True:
        groups = requests.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
        health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        if (set(health) == names and set(health.values()) == {"ok"}) or time.monotonic() > deadline:
            return health
        time.sleep(1)


def test_stage_counters_latency_and_progress_arrive_in_prometheus(prometheus_and_ray, samples_dir, tmp_path):
    import pyarrow.parquet as pq

    from avatar_ops.io import storage
    from jobs.batch import run_job

    base, metrics_port = prometheus_and_ray
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "hoodie.png").write_bytes((samples_dir / "man_hoodie_masked.png").read_bytes())
    bad = bad_files(samples_dir)
    for name in ("notes.png", "empty.jpg"):
        (folder / name).write_bytes(bad[name][0])
    out = tmp_path / "out"
    run_job(str(folder), str(out), JobConfig.model_validate(FAST), progress=False)
    rows = pq.read_table(io.BytesIO(storage.read_bytes(str(out / "manifest" / "manifest.parquet")))).to_pylist()
    statuses = [r["status"] for r in rows]
    assert sorted(statuses) == ["ok", "rejected", "rejected"]
    # Prometheus found the node through Ray's discovery file and scrapes the metrics port.
    targets = requests.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert any(t["scrapeUrl"].startswith(f"http://127.0.0.1:{metrics_port}/") for t in targets), targets
    # Every row passed decode once: rows counted there = rows in the manifest, by status.
    _wait_value(base, 'sum(ray_avatar_rows_total{stage="decode"})', len(rows))
    _wait_value(base, 'sum(ray_avatar_rows_total{stage="decode", status="rejected", reason="bad_input"})', 2)
    # Only the good photo reached the later stages; each stage's histogram saw it once.
    for stage in ("track", "reconstruct", "fit", "export"):
        _wait_value(base, f'sum(ray_avatar_rows_total{{stage="{stage}", status="ok"}})', 1)
        _wait_value(base, f'sum(ray_avatar_stage_latency_seconds_count{{stage="{stage}"}})', 1)
        latency = _query(base, f'sum(ray_avatar_stage_latency_seconds_sum{{stage="{stage}"}})')
        assert sum(latency.values()) > 0, stage
    # Job progress: done = total = rows in the manifest.
    _wait_value(base, 'max(ray_avatar_job_rows{kind="total"})', len(rows))
    _wait_value(base, 'max(ray_avatar_job_rows{kind="done"})', len(rows))
    _wait_value(base, "max(ray_avatar_job_eta_seconds)", 0)
    # No GPU here: GPU series are absent, not zero.
    assert _query(base, "ray_avatar_gpu_utilization_ratio") == {}
    # The relabelling names the cluster on every series, and the dashboard's queries find it there.
    dashboard = json.loads((REPO / "cluster" / "grafana" / "avatar-forge.json").read_text())
    cluster = yaml.safe_load((REPO / "cluster" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]["relabel_configs"][0]["replacement"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            _query(base, target["expr"].replace("$cluster", cluster))  # raises on an invalid query
    rows_panel = next(p for p in dashboard["panels"] if p["title"].startswith("Rows finished"))
    ((metric, matchers),) = selectors(rows_panel["targets"][0]["expr"].replace("$cluster", cluster))
    rows = _query(base, f"sum by (stage) ({metric}{matchers})")  # the panel's series (its rate needs a second sample)
    assert {dict(labels)["stage"] for labels in rows} >= {"decode", "track", "export"}, rows
    # Prometheus loaded alerts.yml and evaluates every rule without error.
    alerts = {r["alert"] for g in yaml.safe_load((REPO / "cluster" / "prometheus" / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert _rule_health(base, alerts) == dict.fromkeys(alerts, "ok")
