"""The cluster files: every dashboard query and alert uses a metric this project or Ray exports,
the RayService embeds serve/config.yaml as it is, and the manifests parse."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.cluster.prom import metric_names

REPO = Path(__file__).resolve().parents[2]
#: What avatar_forge/metrics.py records, as Ray exports it (prefix ray_, counters _total, histograms _bucket/_sum/_count).
PROJECT_METRICS = {
    "ray_avatar_rows_total", "ray_avatar_stage_latency_seconds_bucket", "ray_avatar_stage_latency_seconds_sum",
    "ray_avatar_stage_latency_seconds_count", "ray_avatar_stage_batch_size_bucket", "ray_avatar_stage_rows_in_flight",
    "ray_avatar_gpu_utilization_ratio", "ray_avatar_gpu_memory_used_bytes", "ray_avatar_gpu_memory_total_bytes",
    "ray_avatar_gpu_torch_allocated_bytes", "ray_avatar_serve_requests_in_flight", "ray_avatar_serve_rejected_total",
    "ray_avatar_serve_avatar_jobs_total", "ray_avatar_serve_avatar_jobs_pending", "ray_avatar_job_rows",
    "ray_avatar_job_throughput_rows_per_second", "ray_avatar_job_eta_seconds",
}  # fmt: skip
#: Ray's own, as its Serve and default Grafana dashboards use them.
RAY_METRICS = {
    "ray_serve_num_http_error_requests_total", "ray_serve_deployment_queued_queries", "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_deployment_processing_latency_ms_bucket", "ray_node_network_receive_speed",
}  # fmt: skip


def _queries() -> list[str]:
    dash = json.loads((REPO / "cluster" / "grafana" / "avatar-forge.json").read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    exprs += [v["definition"].split(",")[0].removeprefix("label_values(") for v in dash["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load((REPO / "cluster" / "prometheus" / "alerts.yml").read_text())
    return exprs + [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_query_uses_an_exported_metric():
    queries = _queries()
    assert len(queries) >= 15
    for expr in queries:
        names = metric_names(expr)
        assert names, expr
        assert names <= PROJECT_METRICS | RAY_METRICS, (expr, names - PROJECT_METRICS - RAY_METRICS)
    used = set().union(*(metric_names(e) for e in queries))
    # Every family the project records is on the dashboard or in an alert.
    for family in ("rows", "stage_latency", "stage_batch_size", "stage_rows_in_flight", "gpu_utilization", "gpu_memory", "serve_rejected", "serve_avatar_jobs", "job_rows", "job_eta"):
        assert any(family in name for name in used), family


def test_metric_names_match_what_the_metrics_module_declares():
    source = (REPO / "avatar_forge" / "metrics.py").read_text()
    declared = set(re.findall(r'_metric\("\w+", "(avatar_\w+)"', source))
    exported = {name.removeprefix("ray_").removesuffix("_total").removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in PROJECT_METRICS}
    assert declared == exported


def test_rayservice_embeds_serve_config_verbatim():
    service = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    assert embedded == {k: serve[k] for k in ("proxy_location", "http_options", "applications")}
    rendered = subprocess.run([sys.executable, str(REPO / "cluster" / "render_rayservice.py"), "--check"], check=False, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr


def test_kuberay_and_launcher_manifests():
    cluster = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    groups = cluster["spec"]["workerGroupSpecs"]
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["template"]["spec"]["tolerations"] and group["template"]["spec"]["nodeSelector"]
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
    job = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert job["spec"]["entrypoint"].startswith("avatar-forge batch") and job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["shutdownAfterJobFinishes"] is True
    launcher = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    assert launcher["provider"]["type"] == "aws" and any(t.startswith("gpu") for t in launcher["available_node_types"])
    prom = yaml.safe_load((REPO / "cluster" / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda" in dockerfile and "[gpu]" in dockerfile
