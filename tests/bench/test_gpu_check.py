"""bench/gpu_check.sh on a machine without CUDA, and its deadline (the sections' timeouts).

The script runs here as it would anywhere; the deadline test sources it and runs its own
``run_section`` on commands that overrun. Neither installs anything nor needs a GPU.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_OUT", "GPU_CHECK_PYTHON", "CUDA_VISIBLE_DEVICES")}
    env.update(GPU_CHECK_OUT=str(tmp_path / "out"), GPU_CHECK_VENV=str(tmp_path / "venv"), GPU_CHECK_INSTALL="0", **extra)
    return env


def _one_json(stdout: str) -> dict:
    """stdout must be exactly one JSON object (on one line)."""
    assert stdout.strip().count("\n") == 0, stdout
    report = json.loads(stdout)
    assert isinstance(report, dict)
    return report


def _gpu_driver_here() -> bool:
    return shutil.which("nvidia-smi") is not None or bool(glob.glob("/proc/driver/nvidia/gpus/*"))


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    # Where a driver is present, its GPUs are hidden (the script honours CUDA_VISIBLE_DEVICES="").
    extra = {"CUDA_VISIBLE_DEVICES": ""} if _gpu_driver_here() or torch.cuda.is_available() else {}
    done = subprocess.run(["bash", str(SCRIPT)], env=_env(tmp_path, **extra), cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = _one_json(done.stdout)
    assert report["status"] == "no_cuda"
    assert "no CUDA device" in report["message"] and "nothing was installed or run" in report["message"]
    assert list(report["sections"]) == ["environment", "install", "gsplat", "nvml", "cuda_tests", "synthesis", "pipeline", "fitting"]
    assert {s["status"] for s in report["sections"].values()} == {"skipped"}
    assert report["sections"]["environment"]["figures"]["cuda"] is False  # what the probe saw
    written = tmp_path / "out" / "gpu_check.json"
    assert report["json"] == str(written) and json.loads(written.read_text()) == report
    assert Path(report["log"]).is_file()
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine this Python would pass the environment check and run everything")
def test_a_gpu_without_cuda_torch_and_installs_off_fails_clearly(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    env = _env(tmp_path, GPU_CHECK_PYTHON=sys.executable, PATH=f"{fake_bin}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    report = _one_json(done.stdout)
    assert report["status"] == "failed" and "no Python here has CUDA torch" in report["message"]
    assert report["sections"]["environment"]["status"] == "failed"
    assert report["sections"]["install"] == {"status": "skipped", "seconds": 0.0, "message": "GPU_CHECK_INSTALL=0", "figures": None}
    assert report["sections"]["fitting"]["status"] == "skipped"
    assert not (tmp_path / "venv").exists()


def test_the_deadline_stops_a_section_that_overruns_and_keeps_its_partial_figures(tmp_path):
    # A 3 s budget: the first section (which writes partial figures, as bench/fitting.py --partial
    # does, then sleeps 30 s) is stopped when the budget runs out; the next has no time left.
    script = f"""
        source {SCRIPT} && check_init 3 slow after &&
        run_section slow 60 sh -c 'echo "{{\\"measured\\": 1}}" > "$1"; sleep 30' sh "$CHECK_STATE/slow.partial.json"
        run_section after 60 true
        finish
    """
    done = subprocess.run(["bash", "-c", script], env=_env(tmp_path), cwd=REPO, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    report = _one_json(done.stdout)
    slow, after = report["sections"]["slow"], report["sections"]["after"]
    assert report["status"] == "timed_out" and report["budget_s"] == 3
    assert slow["status"] == "timed_out" and slow["exit_code"] == 124 and slow["limit_s"] <= 3
    assert slow["seconds"] < 30  # stopped, not slept out
    assert slow["figures"] == {"measured": 1}
    assert after["status"] == "skipped" and "no time left" in after["message"]
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == report
