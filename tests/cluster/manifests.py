"""The cluster files as data for the tests: KubeRay manifests and the Ray clusters and containers
inside them, the pinned package sets, pyproject's requirements."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
DOCKERFILE = CLUSTER / "Dockerfile"
IMAGE_CONSTRAINTS = REPO / "constraints" / "gpu-image.txt"
CPU_CONSTRAINTS = REPO / "constraints" / "cpu.txt"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifests() -> dict[str, dict]:
    """Every KubeRay manifest, by file name."""
    return {path.name: load(path) for path in KUBERAY}


def ray_cluster_spec(manifest: dict) -> dict:
    """The RayCluster spec of a RayCluster, a RayJob or a RayService."""
    kind, spec = manifest["kind"], manifest["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"], "RayService": lambda: spec["rayClusterConfig"]}[kind]()


def pod_templates(manifest: dict) -> list[tuple[str, dict, dict]]:
    """``(group, rayStartParams, pod template)`` of the head and every worker group."""
    spec = ray_cluster_spec(manifest)
    head = spec["headGroupSpec"]
    groups = [("head", head.get("rayStartParams", {}), head["template"])]
    return groups + [(g["groupName"], g.get("rayStartParams", {}), g["template"]) for g in spec.get("workerGroupSpecs", [])]


def ray_containers(manifest: dict) -> list[tuple[str, dict]]:
    """``(group, container)``: the Ray container (KubeRay's convention: the first) of every group."""
    return [(group, template["spec"]["containers"][0]) for group, _, template in pod_templates(manifest)]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file (``name==version`` lines)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        if specifier.operator != "==":
            raise ValueError(f"{path.name}: {line!r} is not pinned with ==")
        found[canonicalize_name(requirement.name)] = specifier.version
    return found


def header_value(path: Path, key: str) -> str:
    """``value`` of a ``# key: value`` comment line."""
    match = re.search(rf"^#\s*{re.escape(key)}:\s*(.+)$", path.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{path.name} has no '# {key}:' line")
    return match.group(1).strip()


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def runtime_requirements() -> list[Requirement]:
    """What ``pip install '.[gpu]'`` asks for: the dependencies and the gpu extra."""
    project = pyproject()["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]]
