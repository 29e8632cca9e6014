"""The alert rules: valid for Prometheus (promtool), the same in alerts.yml (launcher clusters) and in
the PrometheusRule (Kubernetes), one alert per cause and per Ray cluster, replayed through promtool's
rule unit tests; and the PodMonitor that gives every series its cluster label."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.cluster import prom
from tests.cluster.manifests import CLUSTER, load, manifests, pod_templates, ray_containers

ALERTS = CLUSTER / "prometheus" / "alerts.yml"
RULE = CLUSTER / "prometheus" / "prometheusrule.yaml"
SOURCES = {"alerts.yml": lambda: load(ALERTS)["groups"], "prometheusrule.yaml": lambda: load(RULE)["spec"]["groups"]}


def _counter(labels: str, per_second: float, minutes: int = 60) -> dict:
    """A counter growing at ``per_second`` sampled each minute."""
    return {"series": labels, "values": f"0+{per_second * 60:g}x{minutes}"}


def _gauge(labels: str, values: str) -> dict:
    return {"series": labels, "values": values}


def _firing(*alerts: dict) -> list[dict]:
    return [
        {"labels": "ALERTS{" + ", ".join(f'{k}="{v}"' for k, v in sorted({**a, "alertstate": "firing"}.items())) + "}", "value": 1}
        for a in alerts
    ]


ROWS = 'ray_avatar_rows_total{{ray_io_cluster="{c}", stage="{s}", status="{st}", reason="{r}"}}'
HTTP = (
    'ray_serve_num_http_error_requests_total{{ray_io_cluster="{c}", error_code="{code}", route="/", method="POST", application="avatar"}}'
)
JOB = 'ray_avatar_job_rows{{ray_io_cluster="{c}", kind="{k}"}}'
GPU = 'ray_avatar_gpu_utilization_ratio{{ray_io_cluster="{c}", stage="{s}", gpu="0", instance="10.0.0.{n}:8080"}}'
HEALTHY_ROWS = [_counter(ROWS.format(c=c, s="track", st="ok", r="none"), 2) for c in ("a", "b")]

#: cause -> (input series, the alerts that must be firing at minute 40, and no other)
SCENARIOS = {
    "the ingress turns requests away (503)": (
        [*HEALTHY_ROWS, _counter(HTTP.format(c="a", code="503"), 1), _counter('ray_avatar_serve_rejected_total{ray_io_cluster="a", reason="overload"}', 1)],
        [{"alertname": "AvatarServeOverloaded", "ray_io_cluster": "a", "severity": "warning"}],
    ),
    "a stage fails rows and Serve answers 500": (
        [*HEALTHY_ROWS, _counter(ROWS.format(c="a", s="track", st="failed", r="exception"), 0.5), _counter(HTTP.format(c="a", code="500"), 0.5)],
        [{"alertname": "AvatarStageFailureRatioHigh", "ray_io_cluster": "a", "stage": "track", "severity": "warning"}],
    ),
    "Serve times out with no failing stage (504)": (
        [*HEALTHY_ROWS, _counter(HTTP.format(c="b", code="504"), 0.5)],
        [{"alertname": "AvatarServe5xx", "ray_io_cluster": "b", "severity": "warning"}],
    ),
    "a batch job stalls (and its GPUs go idle)": (
        [
            _gauge(JOB.format(c="a", k="total"), "1000x60"), _gauge(JOB.format(c="a", k="done"), "400x60"),
            _gauge(GPU.format(c="a", s="fit", n=1), "0x60"),
            _gauge(JOB.format(c="b", k="total"), "1000x60"), _gauge(JOB.format(c="b", k="done"), "0+5x60"),
            _gauge(GPU.format(c="b", s="fit", n=2), "0.9x60"),
        ],
        [{"alertname": "AvatarJobStalled", "ray_io_cluster": "a", "severity": "critical"}],
    ),
    "a GPU stage starves while the job progresses": (
        [
            _gauge(JOB.format(c="a", k="total"), "1000x60"), _gauge(JOB.format(c="a", k="done"), "0+5x60"),
            _gauge(GPU.format(c="a", s="fit", n=1), "0.05x60"), _gauge(GPU.format(c="a", s="track", n=1), "0.7x60"),
            _gauge(JOB.format(c="b", k="total"), "1000x60"), _gauge(JOB.format(c="b", k="done"), "0+5x60"),
            _gauge(GPU.format(c="b", s="fit", n=2), "0.9x60"),
        ],
        [{"alertname": "AvatarGpuIdleWhileRowsQueue", "ray_io_cluster": "a", "stage": "fit", "severity": "warning"}],
    ),
    "all is well": (HEALTHY_ROWS, []),
}  # fmt: skip


def test_prometheusrule_carries_alerts_yml():
    rule = load(RULE)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] and rule["metadata"]["labels"]["release"]
    assert rule["spec"]["groups"] == load(ALERTS)["groups"]
    rendered = subprocess.run(
        [sys.executable, str(CLUSTER / "prometheus" / "render_rule.py"), "--check"], check=False, capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr


@pytest.mark.parametrize("source", SOURCES)
def test_rules_are_valid_for_prometheus(source, tmp_path):
    prom.check_rules(SOURCES[source](), tmp_path / "rules.yml")


def test_every_alert_keeps_clusters_apart():
    for rule in (r for g in load(ALERTS)["groups"] for r in g["rules"]):
        lists = re.findall(r"\b(by|on)\s*\(([^)]*)\)", rule["expr"])
        assert lists, rule["alert"]
        for keyword, labels in lists:
            assert "ray_io_cluster" in {label.strip() for label in labels.split(",")}, (
                f"{rule['alert']}: {keyword} ({labels}) mixes Ray clusters"
            )


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("cause", SCENARIOS)
def test_one_cause_fires_one_alert(source, cause, tmp_path):
    series, firing = SCENARIOS[cause]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": SOURCES[source]()}, sort_keys=False))
    test = {
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [{"expr": 'ALERTS{alertstate="firing"}', "eval_time": "40m", "exp_samples": _firing(*firing)}],
    }
    prom.run_rule_tests(rules, [test], tmp_path / "test.yml")


def test_podmonitor_scrapes_every_ray_pod_with_its_cluster_label():
    monitor = load(CLUSTER / "prometheus" / "podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["metadata"]["name"] and monitor["metadata"]["labels"]["release"]
    spec = monitor["spec"]
    expressions = {e["key"]: e["operator"] for e in spec["selector"].get("matchExpressions", [])}
    assert expressions.get("ray.io/cluster") == "Exists", "select KubeRay's pods (KubeRay labels each with ray.io/cluster)"
    (endpoint,) = spec["podMetricsEndpoints"]
    # KubeRay names Ray's metrics port `metrics` (8080, passed as --metrics-export-port) in every Ray container.
    assert endpoint["port"] == "metrics"
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel["ray_io_cluster"] == ["__meta_kubernetes_pod_label_ray_io_cluster"]
    for name, manifest in manifests().items():
        for group, params, _ in pod_templates(manifest):
            assert params.get("metrics-export-port", "8080") == "8080", f"{name} {group}"
        for group, container in ray_containers(manifest):
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            assert ports.get("metrics", 8080) == 8080, f"{name} {group}: the `metrics` port is not Ray's metrics port"
    launcher = load(CLUSTER / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert {"target_label": "ray_io_cluster", "replacement": "avatar-forge"} in launcher["relabel_configs"]
