"""The KubeRay manifests validate against KubeRay v1.7.0's CRDs (vendored in kuberay_crds/, unknown
fields rejected as `kubectl apply` does), pass the operator's own checks that a schema cannot
express, and carry what day two needs: token auth everywhere, GCS fault tolerance and an upgrade
strategy on the RayService, a pre-running deadline and a config from object storage on the RayJob."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.cluster.manifests import KUBERAY, REPO, env_of, load, manifests, pod_templates, ray_cluster_spec, ray_containers

jsonschema = pytest.importorskip("jsonschema")

CRDS = Path(__file__).resolve().parent / "kuberay_crds" / "kuberay-v1.7.0.schema.json"
#: validation.go: a RayCluster name <= 53 characters; RayJob and RayService names 6 fewer (KubeRay appends a suffix).
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
TOKEN_SECRET = "avatar-forge-ray-token"


def _strict(schema):
    """The schema with unknown fields rejected wherever the CRD lists the fields (kubectl's strict
    field validation; objects marked x-kubernetes-preserve-unknown-fields stay open)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


def _validator(kind: str):
    crds = json.loads(CRDS.read_text())
    schema = _strict({"$defs": crds["$defs"], **crds["kinds"][kind]})
    return jsonschema.Draft202012Validator(schema)


def _errors(manifest: dict) -> list[str]:
    validator = _validator(manifest["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_manifest_validates_against_kuberay_v1_7_crd(path: Path):
    manifest = load(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert _errors(manifest) == []


def test_the_crd_validation_catches_mistakes():
    job = load(REPO / "cluster" / "kuberay" / "rayjob.yaml")
    typo = copy.deepcopy(job)
    typo["spec"]["preRunningDeadlineSecond"] = typo["spec"].pop("preRunningDeadlineSeconds")
    assert any("preRunningDeadlineSecond" in e for e in _errors(typo))
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["metrics-export-port"] = 8080
    assert any("rayStartParams" in e and "not of type 'string'" in e for e in _errors(wrong_type))
    bad_mode = copy.deepcopy(job)
    bad_mode["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    assert any("authOptions.mode" in e for e in _errors(bad_mode))
    deep = copy.deepcopy(job)  # inside the pod template (a $ref'd part of the schema)
    deep["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    assert any("envFrm" in e for e in _errors(deep))


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_operator_side_checks(path: Path):
    """What ray-operator/controllers/ray/utils/validation.go (v1.7.0) rejects, checked by hand."""
    manifest = load(path)
    name, kind = manifest["metadata"]["name"], manifest["kind"]
    assert len(name) <= MAX_NAME[kind] and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), (
        f"{kind} name {name!r}: a DNS-1035 label of at most {MAX_NAME[kind]}"
    )
    spec = ray_cluster_spec(manifest)
    for group in spec.get("workerGroupSpecs", []):
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]
    for _, params, template in pod_templates(manifest):
        assert template["spec"]["containers"], "every group needs a container"
        assert "labels" not in params, "rayStartParams['labels'] is not supported; use the group's labels"
    head_params = spec["headGroupSpec"].get("rayStartParams", {})
    head_env = env_of(spec["headGroupSpec"]["template"]["spec"]["containers"][0])
    if "gcsFaultToleranceOptions" in spec:
        assert "redis-password" not in head_params and "REDIS_PASSWORD" not in head_env, "use gcsFaultToleranceOptions.redisPassword"
        assert "RAY_REDIS_ADDRESS" not in head_env, "use gcsFaultToleranceOptions.redisAddress"
        assert "ray.io/ft-enabled" not in manifest["metadata"].get("annotations", {}), (
            "the annotation and gcsFaultToleranceOptions exclude each other"
        )
    auth = spec.get("authOptions", {})
    if auth.get("mode") == "token":
        major, minor, *_ = (int(p) for p in str(spec["rayVersion"]).split("."))
        assert (major, minor) >= (2, 52), "token auth needs Ray >= 2.52"
        if auth.get("enableK8sTokenAuth"):
            assert kind == "RayCluster", f"Kubernetes token auth is not supported for {kind}"
            assert not auth.get("secretName"), "enableK8sTokenAuth and secretName exclude each other"
    else:
        assert not auth.get("enableK8sTokenAuth"), "enableK8sTokenAuth needs authOptions.mode: token"
    if kind == "RayJob":
        job = manifest["spec"]
        yaml.safe_load(job.get("runtimeEnvYAML", ""))  # the operator rejects invalid YAML
        assert job.get("activeDeadlineSeconds", 1) > 0 and job.get("preRunningDeadlineSeconds", 1) > 0 and job.get("backoffLimit", 0) >= 0
        assert job.get("ttlSecondsAfterFinished", 0) == 0 or job.get("shutdownAfterJobFinishes"), (
            "ttlSecondsAfterFinished needs shutdownAfterJobFinishes"
        )
    if kind == "RayService":
        strategy = manifest["spec"].get("upgradeStrategy", {}).get("type")
        assert strategy in (None, "NewCluster", "NewClusterWithIncrementalUpgrade", "None")
        if strategy == "NewClusterWithIncrementalUpgrade":
            assert spec.get("enableInTreeAutoscaling") and manifest["spec"]["upgradeStrategy"].get("clusterUpgradeOptions")


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_token_auth_from_a_secret_guards_the_dashboard(path: Path):
    manifest = load(path)
    spec = ray_cluster_spec(manifest)
    # KubeRay then sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (from the Secret's `auth_token`) in
    # every Ray container, the submitter's and the operator's own dashboard client.
    assert spec.get("authOptions") == {"mode": "token", "secretName": TOKEN_SECRET}, (
        f"{path.name}: Ray token auth from the Secret {TOKEN_SECRET}"
    )
    head = spec["headGroupSpec"].get("rayStartParams", {})
    assert head.get("dashboard-host", "0.0.0.0") in ("0.0.0.0", "127.0.0.1")
    for group, container in ray_containers(manifest):
        env = env_of(container)
        assert env.get("RAY_AUTH_MODE", "token") == "token", f"{path.name} {group}: RAY_AUTH_MODE overrides authOptions"
        assert "RAY_AUTH_TOKEN" not in env, f"{path.name} {group}: a literal token in the manifest"


def test_rayservice_survives_head_loss_and_upgrades():
    service = load(REPO / "cluster" / "kuberay" / "rayservice.yaml")
    spec = service["spec"]
    assert spec["upgradeStrategy"]["type"] in ("NewCluster", "NewClusterWithIncrementalUpgrade"), "explicit zero-downtime upgrades"
    ft = spec["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft.get("backend", "redis") == "redis" and re.fullmatch(r"(rediss?://)?[a-z0-9.-]+:\d+", ft["redisAddress"]), ft
    secret = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"] and "value" not in ft["redisPassword"], (
        "the Redis password comes from a Secret, never the manifest"
    )
    readme = (REPO / "cluster" / "README.md").read_text()
    assert secret["name"] in readme and "gcsFaultToleranceOptions" in readme, "cluster/README.md documents the external Redis"


def test_rayjob_fails_fast_without_gpus_and_reads_its_config_from_storage():
    from avatar_forge.cli import build_parser
    from jobs.config import JobConfig

    job = load(REPO / "cluster" / "kuberay" / "rayjob.yaml")
    spec = job["spec"]
    # KubeRay submits only once the cluster is ready, that is with minReplicas workers of every
    # group running: a GPU group with minReplicas >= 1 makes "no GPU node" count against the deadline.
    assert 0 < spec["preRunningDeadlineSeconds"] < spec["activeDeadlineSeconds"]
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert any(g["minReplicas"] >= 1 and "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["avatar-forge", "batch"]
    args = build_parser().parse_args(argv[1:])
    assert re.match(r"s3://[^/]+/.+\.ya?ml$", args.config), (
        f"--config {args.config}: a URI the cluster reads, not a file baked into the image"
    )
    assert args.set, "the RayJob shows a --set override"
    # The object is an upload of a config in the repo; with the overrides it validates, and they take effect.
    local = REPO / "jobs" / "configs" / Path(args.config).name
    config = JobConfig.load(str(local), args.set)
    for override in args.set:
        key, _, value = override.partition("=")
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == yaml.safe_load(value), override


def test_every_ray_pod_carries_the_label_the_podmonitor_selects():
    monitor = load(REPO / "cluster" / "prometheus" / "podmonitor.yaml")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    for name, manifest in manifests().items():
        for group, _, template in pod_templates(manifest):
            labels = template.get("metadata", {}).get("labels", {})
            assert wanted.items() <= labels.items(), f"{name} {group}: labels {labels} lack {wanted}"
