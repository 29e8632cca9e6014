"""Write cluster/kuberay/rayservice.yaml with serve/config.yaml embedded as its serveConfigV2.

    python cluster/render_rayservice.py            # write it
    python cluster/render_rayservice.py --check    # exit 1 if it is out of date

Run it after editing serve/config.yaml; tests/cluster/test_configs.py fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/avatar-forge:0.1.0"
RAY_VERSION = "2.60.0"  # = the ray pin of constraints/gpu-image.txt
ANNY_CACHE_DIR = "/opt/anny"  # where cluster/Dockerfile built the Anny model
TOKEN_SECRET = "avatar-forge-ray-token"
REDIS = {"address": "redis://avatar-forge-redis:6379", "secret": "avatar-forge-redis", "key": "password"}
LABELS = {"app.kubernetes.io/name": "avatar-forge"}
HEADER = """\
# The online API as a RayService (KubeRay). serveConfigV2 is serve/config.yaml (proxy_location,
# http_options, applications) embedded verbatim by cluster/render_rayservice.py; do not edit it here.
# Secrets: `avatar-forge-api-keys` (AVATAR_API_KEYS=key1,key2), `avatar-forge-aws` (S3 credentials),
# `avatar-forge-ray-token` (key `auth_token`: Ray's token auth on the dashboard and the GCS) and
# `avatar-forge-redis` (key `password`: the external Redis that keeps the GCS state, so Serve goes on
# answering while the head restarts). upgradeStrategy NewCluster: a changed rayClusterConfig starts a
# new cluster and moves traffic once it serves. See cluster/README.md. kubectl apply -f this file.
"""


class _Literal(str):
    pass


def _literal(dumper, value):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


def serve_config_text() -> str:
    serve = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    return yaml.safe_dump({k: serve[k] for k in ("proxy_location", "http_options", "applications")}, sort_keys=False)


def _container(name: str, cpu: str, memory: str, gpus: int = 0) -> dict:
    resources = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {
        "name": name, "image": IMAGE, "resources": {"requests": resources, "limits": resources},
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "ANNY_CACHE_DIR", "value": ANNY_CACHE_DIR}],
        "envFrom": [{"secretRef": {"name": "avatar-forge-api-keys"}}, {"secretRef": {"name": "avatar-forge-aws"}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    }  # fmt: skip


def render() -> str:
    head = _container("ray-head", "4", "16Gi")
    head["ports"] = [{"containerPort": 8000, "name": "serve"}, {"containerPort": 8265, "name": "dashboard"}, {"containerPort": 8080, "name": "metrics"}]
    service = {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "avatar-api"},
        "spec": {
            "serveConfigV2": _Literal(serve_config_text()),
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION, "enableInTreeAutoscaling": True,
                "authOptions": {"mode": "token", "secretName": TOKEN_SECRET},
                "gcsFaultToleranceOptions": {
                    "redisAddress": REDIS["address"],
                    "redisPassword": {"valueFrom": {"secretKeyRef": {"name": REDIS["secret"], "key": REDIS["key"]}}},
                },
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "metrics-export-port": "8080", "dashboard-host": "0.0.0.0"},
                    "template": {"metadata": {"labels": dict(LABELS)}, "spec": {"containers": [head], "volumes": [{"name": "cache", "emptyDir": {}}]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu", "minReplicas": 1, "maxReplicas": 16, "rayStartParams": {"metrics-export-port": "8080"},
                    "template": {"metadata": {"labels": dict(LABELS)}, "spec": {
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                        "containers": [_container("ray-worker", "8", "64Gi", gpus=1)], "volumes": [{"name": "cache", "emptyDir": {}}],
                    }},
                }],
            },
        },
    }  # fmt: skip
    dumper = yaml.SafeDumper
    dumper.add_representer(_Literal, _literal)
    return HEADER + yaml.dump(service, Dumper=dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    import sys

    target = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
    if "--check" in sys.argv[1:]:
        if target.read_text() != render():
            sys.exit(f"{target} is out of date: run python cluster/render_rayservice.py")
    else:
        target.write_text(render())
