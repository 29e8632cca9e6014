"""Write kuberay-v1.7.0.schema.json: the ``v1`` openAPIV3Schema of KubeRay's RayCluster, RayJob and
RayService CRDs, as the tests in tests/cluster validate the manifests against them.

    git clone --depth 1 --branch v1.7.0 https://github.com/ray-project/kuberay
    python tests/cluster/kuberay_crds/vendor.py kuberay/ray-operator/config/crd/bases

Trimmed, not edited: ``status`` is dropped (manifests never set it), and the two subtrees the three
kinds repeat verbatim (a RayCluster's ``spec``, which is also a RayJob's ``rayClusterSpec`` and a
RayService's ``rayClusterConfig``; and the pod template of every group) are stored once under
``$defs`` and referenced, which keeps the file at about a sixth of the CRDs' size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TAG = "v1.7.0"
KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}


def v1_schema(crd: dict) -> dict:
    """The served ``v1`` version's openAPIV3Schema, without ``status``."""
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    schema["properties"].pop("status", None)
    return schema


def replace(node, target: dict, ref: str):
    """``node`` with every subtree equal to ``target`` replaced by a ``$ref`` to it."""
    if node == target:
        return {"$ref": ref}
    if isinstance(node, dict):
        return {k: replace(v, target, ref) for k, v in node.items()}
    if isinstance(node, list):
        return [replace(v, target, ref) for v in node]
    return node


def vendor(bases: Path) -> dict:
    kinds = {kind: v1_schema(yaml.safe_load((bases / name).read_text())) for kind, name in KINDS.items()}
    cluster_spec = kinds["RayCluster"]["properties"]["spec"]
    pod_template = cluster_spec["properties"]["headGroupSpec"]["properties"]["template"]
    defs = {"RayClusterSpec": replace(cluster_spec, pod_template, "#/$defs/PodTemplateSpec"), "PodTemplateSpec": pod_template}
    for kind, schema in kinds.items():
        schema = replace(schema, cluster_spec, "#/$defs/RayClusterSpec")
        kinds[kind] = replace(schema, pod_template, "#/$defs/PodTemplateSpec")
    return {
        "$comment": f"KubeRay {TAG} CRDs (ray-project/kuberay, ray-operator/config/crd/bases/, Apache-2.0): v1 openAPIV3Schema of "
        "RayCluster, RayJob, RayService without status; repeated subtrees moved to $defs. Written by vendor.py.",
        "$defs": defs,
        "kinds": kinds,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} KUBERAY_CHECKOUT/ray-operator/config/crd/bases  (at tag {TAG})")
    out = HERE / f"kuberay-{TAG}.schema.json"
    out.write_text(json.dumps(vendor(Path(sys.argv[1])), indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
