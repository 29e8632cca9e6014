"""Write cluster/prometheus/prometheusrule.yaml: alerts.yml's groups as a Prometheus Operator
PrometheusRule, so Kubernetes and the launcher cluster alert on the same rules.

    python cluster/prometheus/render_rule.py            # write it
    python cluster/prometheus/render_rule.py --check    # exit 1 if it is out of date

Run it after editing alerts.yml; tests/cluster/test_alerts.py fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
HEADER = """\
# alerts.yml as a Prometheus Operator PrometheusRule (kube-prometheus-stack selects it by its
# `release` label). Written by cluster/prometheus/render_rule.py from alerts.yml; do not edit here.
# Apply in the namespace of the Ray pods: kubectl apply -f cluster/prometheus/prometheusrule.yaml
"""


def _literal_multiline(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line strings (the PromQL expressions) as YAML block scalars, as in alerts.yml."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


def render() -> str:
    rules = yaml.safe_load((HERE / "alerts.yml").read_text())
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "avatar-forge", "labels": {"release": "prometheus"}},
        "spec": {"groups": rules["groups"]},
    }

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _literal_multiline)
    return HEADER + yaml.dump(resource, Dumper=Dumper, sort_keys=False, width=140)


if __name__ == "__main__":
    import sys

    target = HERE / "prometheusrule.yaml"
    if "--check" in sys.argv[1:]:
        if target.read_text() != render():
            sys.exit(f"{target} is out of date: run python cluster/prometheus/render_rule.py")
    else:
        target.write_text(render())
