"""Fault tolerance: a worker node of a multi-node Ray cluster (simulated on this machine, loopback
only) dies mid-job; the manifest still has every row exactly once."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from PIL import Image

from jobs.config import JobConfig
from tests.jobs.test_batch import FAST


@pytest.mark.slow  # the nightly run (`make test-all`); ~65 s. The default run keeps the rerun that skips finished rows and the fault classification.
def test_losing_a_worker_node_mid_job_loses_no_rows(samples_dir, tmp_path):
    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    from jobs.batch import run_job

    if ray.is_initialized():
        ray.shutdown()
    folder = tmp_path / "photos"
    folder.mkdir()
    hoodie = Image.open(samples_dir / "man_hoodie_masked.png").convert("RGB")
    for i in range(5):
        hoodie.rotate(0, translate=(3 * i, 0)).save(folder / f"p{i}.png")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        victim = cluster.add_node(num_cpus=2)
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        # One pool per stage, as on a GPU cluster (without GPUs the default would fuse them).
        config = JobConfig.model_validate({**FAST, "stages": {"fuse": "never"}, "ray": {"address": cluster.address, "max_restarts": 3, "max_task_retries": 3}, "attempts": 3})
        out = tmp_path / "out"
        result: dict = {}

        def job() -> None:
            try:
                result["summary"] = run_job(str(folder), str(out), config, progress=False)
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                result["error"] = err

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((out / "_rows").glob("*.json")) and thread.is_alive():
            time.sleep(0.5)
        assert thread.is_alive(), f"the job ended before a node could be lost: {result}"
        cluster.remove_node(victim)
        thread.join(timeout=600)
        assert not thread.is_alive(), "the job did not finish after the node was lost"
        assert "error" not in result, result.get("error")
        rows = pq.read_table(io.BytesIO((out / "manifest" / "manifest.parquet").read_bytes())).to_pylist()
        assert sorted(os.path.basename(r["source_uri"]) for r in rows) == [f"p{i}.png" for i in range(5)]
        assert all(r["status"] == "ok" for r in rows), [(r["status"], r["reason"], r["detail"][:200]) for r in rows]
        assert result["summary"]["actor_pools"] == [["track"], ["reconstruct"], ["fit"], ["export"]]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
