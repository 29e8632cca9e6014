"""The Grafana dashboard: one Ray cluster at a time (the `cluster` variable in every query), GPU
memory per GPU however many actors share it, Serve latency; every query valid PromQL (promtool),
and the GPU and latency queries evaluated by promtool on series from two clusters."""

from __future__ import annotations

import json

from tests.cluster import prom
from tests.cluster.manifests import CLUSTER

DASHBOARD = CLUSTER / "grafana" / "avatar-forge.json"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _targets() -> list[tuple[str, dict]]:
    return [(panel["title"], target) for panel in _dashboard()["panels"] for target in panel["targets"]]


def _panel(words: str) -> dict:
    (panel,) = [p for p in _dashboard()["panels"] if words in p["title"]]
    return panel


def _for_cluster(expr: str, cluster: str) -> str:
    return expr.replace("$cluster", cluster)


def test_cluster_variable_filters_every_query():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    cluster = variables["cluster"]
    assert cluster["type"] == "query" and not cluster.get("includeAll") and not cluster.get("multi"), "one cluster at a time"
    query = cluster["query"]["query"] if isinstance(cluster["query"], dict) else cluster["query"]
    assert query.startswith("label_values(") and query.rstrip(")").split(",")[-1].strip() == "ray_io_cluster"
    for title, target in _targets():
        found = prom.selectors(target["expr"])
        assert found, (title, target["expr"])
        for metric, matchers in found:
            assert prom.label_matchers(matchers).get("ray_io_cluster") == '="$cluster"', (
                f"{title}: {metric}{matchers} is not filtered by the cluster variable"
            )


def test_every_query_is_valid_promql(tmp_path):
    rules = [{"record": f"dashboard:query_{i}", "expr": _for_cluster(t["expr"], "a")} for i, (_, t) in enumerate(_targets())]
    prom.check_rules([{"name": "dashboard", "rules": rules}], tmp_path / "dashboard.yml")


def test_gpu_memory_is_per_gpu_not_summed_over_the_actors_sharing_it(tmp_path):
    panel = _panel("GPU memory")
    used = next(t["expr"] for t in panel["targets"] if "ray_avatar_gpu_memory_used_bytes" in t["expr"])
    gib = 2**30
    # Four 0.25-GPU actors (two stages) on GPU 0 of one node each report that GPU's NVML figure;
    # cluster b runs on the same addresses and must not show.
    series = [
        {
            "series": f'ray_avatar_gpu_memory_used_bytes{{ray_io_cluster="{c}", instance="10.0.0.1:8080", gpu="0", stage="{s}", WorkerId="{w}"}}',
            "values": f"{v}x10",
        }
        for c, v in (("a", 20 * gib), ("b", 70 * gib))
        for s, w in (("track", "w1"), ("track", "w2"), ("reconstruct", "w3"), ("export", "w4"))
    ]
    expected = [{"labels": '{gpu="0", instance="10.0.0.1:8080"}', "value": 20 * gib}]
    test = {
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [{"expr": _for_cluster(used, "a"), "eval_time": "5m", "exp_samples": expected}],
    }
    empty = tmp_path / "empty.yml"
    empty.write_text("groups: []\n")
    prom.run_rule_tests(empty, [test], tmp_path / "test.yml")


def test_serve_latency_panel(tmp_path):
    panel = _panel("request latency")
    assert panel["fieldConfig"]["defaults"]["unit"] == "ms"
    quantiles = {t["refId"]: t["expr"] for t in panel["targets"]}
    assert all("histogram_quantile" in e and "ray_serve_http_request_latency_ms_bucket" in e for e in quantiles.values())
    p99 = next(e for e in quantiles.values() if e.startswith("histogram_quantile(0.99"))
    # 100 requests a minute to route /v1/track: 90 under 100 ms, 10 between 1 s and 5 s; cluster b is slow.
    buckets = {"100": 90, "1000": 90, "5000": 100, "+Inf": 100}
    series = [
        {"series": f'ray_serve_http_request_latency_ms_bucket{{ray_io_cluster="a", route="/v1/track", le="{le}"}}', "values": f"0+{n}x30"}
        for le, n in buckets.items()
    ] + [{"series": 'ray_serve_http_request_latency_ms_bucket{ray_io_cluster="b", route="/v1/track", le="+Inf"}', "values": "0+100x30"}]
    # p99 falls in the 1000-5000 bucket, 90% of the way through it (linear interpolation); rounded
    # to the millisecond, as promtool compares exactly.
    expected = [{"labels": '{route="/v1/track"}', "value": 4600}]
    test = {
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [{"expr": f"round({_for_cluster(p99, 'a')})", "eval_time": "20m", "exp_samples": expected}],
    }
    empty = tmp_path / "empty.yml"
    empty.write_text("groups: []\n")
    prom.run_rule_tests(empty, [test], tmp_path / "test.yml")


def test_panels_sit_on_the_grid_without_overlap():
    panels = _dashboard()["panels"]
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    assert len({p["id"] for p in panels}) == len(panels)
