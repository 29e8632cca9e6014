"""`avatar-forge submit` against a real Ray cluster's Jobs API (a local head with its dashboard on
127.0.0.1): the working dir is shipped, the job runs `avatar-forge batch`, --follow tails its logs
and exits 0 when it succeeded; the manifest it wrote has every row."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from avatar_forge.cli import main
from tests.inputs import bad_files
from tests.net import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the nightly run (`make test-all`); ~90 s
def test_submit_follow_runs_the_batch_job_on_the_cluster(samples_dir, tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq
    import ray

    from avatar_ops.io import storage

    # The cluster's nodes have avatar-forge on PATH (the image); here that is this venv.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    context = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(), log_to_driver=False)
    try:
        folder = tmp_path / "photos"
        folder.mkdir()
        for name in ("notes.png", "tiny.png"):
            (folder / name).write_bytes(bad_files(samples_dir)[name][0])
        out = tmp_path / "out"
        code = main(["submit", str(folder), str(out), "--address", f"http://{context.dashboard_url}", "--working-dir", str(REPO), "--follow"])
        printed = capsys.readouterr().out
        assert code == 0, printed[-3000:]
        submission = printed.splitlines()[0]
        assert submission.startswith("raysubmit_") and f"{submission}: SUCCEEDED" in printed
        rows = pq.read_table(io.BytesIO(storage.read_bytes(str(out / "manifest" / "manifest.parquet")))).to_pylist()
        assert sorted((r["source_uri"].rsplit("/", 1)[-1], r["reason"]) for r in rows) == [("notes.png", "not_an_image"), ("tiny.png", "too_small")]
    finally:
        ray.shutdown()
