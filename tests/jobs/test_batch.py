"""The batch job on a real local Ray (2 CPUs): per-row outcomes over real and broken photos, S3
through a real S3 endpoint (moto server on loopback), and resume after the driver is killed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from jobs.config import JobConfig
from tests.inputs import bad_files

REPO = Path(__file__).resolve().parents[2]
FAST = {
    # Hands and face off, and a short body fit (as tests/test_parity.py has it): the job's wiring is
    # what these tests check (test_parity.py runs the hands and face through both adapters).
    "pipeline": {
        "num_gaussians": 800, "fit": {"iters": 2, "resolution": 64},
        "tracking": {
            "hands": {"enabled": False}, "face": {"enabled": False}, "max_reprojection_error": 10.0,
            "fit": {"orient_iters": 5, "keypoint_iters": 5, "iters": 5},
        },
        "export": {"turntable_views": 2, "preview_size": 48, "animation_frames": 2, "glb_texture_size": 256, "glb_max_frames": 8},
    },
    "ray": {"num_cpus": 2},
}


def _read_manifest(uri: str):
    import pyarrow.parquet as pq

    from avatar_ops.io import storage

    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()


@pytest.fixture(scope="module")
def local_ray(s3_endpoint):
    """One local Ray (2 CPUs) for the module; workers inherit the S3 settings."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, samples_dir):
    folder = tmp_path_factory.mktemp("photos")
    (folder / "nested").mkdir()
    (folder / "nested" / "hoodie.png").write_bytes((samples_dir / "man_hoodie_masked.png").read_bytes())
    (folder / "woman.jpg").write_bytes((samples_dir / "woman_dress_fullbody.jpg").read_bytes())
    (folder / "readme.txt").write_text("not listed: wrong extension")
    expected = {"nested/hoodie.png": ("ok", ""), "woman.jpg": ("ok", "")}
    for name, (data, reason) in bad_files(samples_dir).items():
        (folder / name).write_bytes(data)
        expected[name] = ("rejected", reason)
    return folder, expected


@pytest.fixture(scope="module")
def folder_run(local_ray, photo_folder, tmp_path_factory):
    from jobs.batch import run_job

    folder, expected = photo_folder
    out = tmp_path_factory.mktemp("out")
    summary = run_job(str(folder), str(out), JobConfig.model_validate(FAST), progress=False)
    return folder, expected, out, summary


def test_every_input_gets_exactly_one_row_with_its_outcome(folder_run):
    from avatar_ops.avatar.bundle import avatar_from_bytes

    folder, expected, out, summary = folder_run
    rows = _read_manifest(str(out / "manifest" / "manifest.parquet"))
    by_name = {os.path.relpath(r["source_uri"], folder): r for r in rows}
    assert len(rows) == len(expected) == summary["rows"]
    assert sorted(by_name) == sorted(expected)
    for name, (status, reason) in expected.items():
        row = by_name[name]
        assert (row["status"], row["reason"]) == (status, reason), (name, row["status"], row["reason"], row["detail"])
    for name, (status, _) in expected.items():
        if status != "ok":
            continue
        row = by_name[name]
        assert row["avatar_uri"] == str(out / "avatars" / row["id"])
        avatar = avatar_from_bytes(Path(row["bundle_uri"]).read_bytes())
        assert len(avatar) == 800
        from plyfile import PlyData

        assert PlyData.read(row["ply_uri"])["vertex"].count == 800
        assert row["seconds"]["track"] > 0 and row["seconds"]["fit"] > 0 and row["psnr"] > 10
        assert row["seconds"]["synthesize"] is None  # the stage did not run
        assert row["started_at"] <= row["finished_at"] and row["run_id"] == summary["run_id"]
        assert row["facing"] == "front"  # the samples face the camera
        assert len(row["content_id"]) == 20 and row["config_digest"] == summary["config_digest"]
    assert summary["statuses"] == {"ok": 2, "rejected": 7}
    assert summary["actor_pools"] == [["track", "reconstruct", "fit", "export"]]  # no GPUs: fused
    saved = JobConfig.load(out / "job_config.yaml")
    assert saved == JobConfig.model_validate(FAST)


def test_rerun_skips_finished_rows_and_duplicates_nothing(folder_run):
    from jobs.batch import run_job

    folder, expected, out, _ = folder_run
    bundles = sorted((out / "avatars").glob("*/avatar.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in bundles}
    summary = run_job(str(folder), str(out), JobConfig.model_validate(FAST), progress=False)
    rows = _read_manifest(str(out / "manifest" / "manifest.parquet"))
    assert len(rows) == len(expected) and summary["resumed"] == len(expected)
    assert len({r["source_uri"] for r in rows}) == len(rows)
    assert {p: p.stat().st_mtime_ns for p in bundles} == before


def test_manifest_input_with_ids_and_bad_rows(local_ray, s3_endpoint, samples_dir, folder_run, tmp_path, capsys):
    """A manifest through `avatar-forge batch`, with its config read from s3:// and a --set
    override; also the synthesize stage (a tiny SVD pipeline, both modes) between reconstruct and
    fit. Rejected rows do not count towards max_failed_ratio, failed rows do: the run exits
    non-zero and says which threshold applied. Its manifest has the fixed schema and concatenates
    with another run's without casting."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avatar_forge.cli import EXIT_TOO_MANY_FAILED, main
    from avatar_ops.synthesis.tiny_svd import make_tiny_svd
    from jobs.manifest import manifest_schema

    photo = str(samples_dir / "man_hoodie_masked.png")
    lines = [
        {"id": "subject-1", "uri": photo},
        {"id": "subject-2", "uri": photo, "keypoints": "{this is not json"},
        {"id": "subject-3", "uri": str(tmp_path / "missing.jpg")},
        {"id": "../../../escaped", "uri": photo},
        {"id": "twin", "uri": photo},
        {"id": "twin", "uri": str(samples_dir / "woman_dress_fullbody.jpg")},
    ]
    manifest = tmp_path / "inputs.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "out"
    synthesis = {
        "synthesis_mode": "both",
        "synthesis": {"model": str(make_tiny_svd(tmp_path / "svd")), "size": 32, "view": {"num_frames": 2, "steps": 2, "window": 4}, "pose": {"num_frames": 2, "steps": 2, "window": 4}},
    }
    config = JobConfig.model_validate({**FAST, "pipeline": {**FAST["pipeline"], **synthesis}})
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="configs")
    s3.put_object(Bucket="configs", Key="jobs/synthesis.yaml", Body=config.to_yaml().encode())
    code = main(["batch", str(manifest), str(out), "--config", "s3://configs/jobs/synthesis.yaml", "--set", "stages.track.batch_size=3", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == EXIT_TOO_MANY_FAILED, printed
    assert f"failed rows: 1 of 6 (16.67%); max_failed_ratio 0.05 (from --config): FAILED (exit {EXIT_TOO_MANY_FAILED})" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statuses"] == {"ok": 1, "rejected": 4, "failed": 1} and summary["passed"] is False
    saved = JobConfig.load(str(out / "job_config.yaml"))
    assert saved.stages.track.batch_size == 3 and saved.pipeline == config.pipeline
    rows = {r["id"]: r for r in _read_manifest(str(out / "manifest" / "manifest.parquet"))}
    assert set(rows) == {"subject-1", "subject-2", "subject-3", "../../../escaped", "twin"}
    assert (rows["../../../escaped"]["status"], rows["../../../escaped"]["reason"]) == ("rejected", "bad_id")
    assert not (tmp_path / "escaped").exists() and sorted(p.name for p in (out / "avatars").iterdir()) == ["subject-1"]
    twins = [r for r in _read_manifest(str(out / "manifest" / "manifest.parquet")) if r["id"] == "twin"]
    assert [(r["status"], r["reason"]) for r in twins] == [("rejected", "duplicate_id")] * 2
    assert rows["subject-1"]["status"] == "ok" and (out / "avatars" / "subject-1" / "avatar.ply").exists()
    listed = dict(rows["subject-1"]["files"])
    assert listed["avatar.glb"] == str(out / "avatars" / "subject-1" / "avatar.glb") and (out / "avatars" / "subject-1" / "avatar.glb").read_bytes()[:4] == b"glTF"
    assert Path(listed["viewer.html"]).read_bytes().startswith(b"<!doctype html>")
    quality = dict(rows["subject-1"]["quality"])
    assert quality["synthesis_refined"] == 1.0 and quality["fit_pseudo_labels"] == 4.0
    assert rows["subject-1"]["seconds"]["synthesize"] > 0
    assert (rows["subject-2"]["status"], rows["subject-2"]["reason"]) == ("rejected", "bad_keypoints")
    assert "keypoints" in rows["subject-2"]["detail"]
    assert (rows["subject-3"]["status"], rows["subject-3"]["reason"]) == ("failed", "not_found")
    assert rows["subject-3"]["source_uri"] == str(tmp_path / "missing.jpg")  # absolute, as given
    tables = [pq.read_table(o / "manifest" / "manifest.parquet") for o in (out, folder_run[2])]
    assert tables[0].schema == tables[1].schema == manifest_schema()
    assert pa.concat_tables(tables).num_rows == 6 + tables[1].num_rows


def test_s3_in_and_out_through_a_real_endpoint(local_ray, s3_endpoint, samples_dir):
    import boto3

    from jobs.batch import run_job

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="avatars")
    s3.put_object(Bucket="photos", Key="batch-1/a/hoodie.png", Body=(samples_dir / "man_hoodie_masked.png").read_bytes())
    s3.put_object(Bucket="photos", Key="batch-1/empty.jpg", Body=b"")
    summary = run_job("s3://photos/batch-1", "s3://avatars/run-1", JobConfig.model_validate(FAST), progress=False)
    assert summary["statuses"] == {"ok": 1, "rejected": 1}
    rows = _read_manifest("s3://avatars/run-1/manifest/manifest.parquet")
    ok = next(r for r in rows if r["status"] == "ok")
    assert ok["source_uri"] == "s3://photos/batch-1/a/hoodie.png"
    assert ok["bundle_uri"].startswith("s3://avatars/run-1/avatars/")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="avatars", Prefix="run-1/")["Contents"]}
    assert f"run-1/avatars/{ok['id']}/avatar.ply" in keys and "run-1/summary.json" in keys


@pytest.mark.slow  # the nightly run (`make test-all`); ~45 s. The default run keeps the rerun that skips finished rows (the same per-row records) and the fault classification.
def test_resume_after_the_driver_is_killed(local_ray, samples_dir, tmp_path):
    import psutil

    from jobs.batch import run_job

    folder = tmp_path / "photos"
    folder.mkdir()
    hoodie = Image.open(samples_dir / "man_hoodie_masked.png").convert("RGB")
    for i in range(3):  # three different photos (different bytes, different avatar ids)
        hoodie.rotate(0, translate=(4 * i, 0)).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    config_path = tmp_path / "job.yaml"
    # Rows one at a time through the (fused) actor stage, so the job is still running after the first.
    config = JobConfig.model_validate({**FAST, "stages": {"track": {"batch_size": 1}}})
    config_path.write_text(config.to_yaml())
    # The driver joins the module's Ray, as a job's driver joins its cluster: killing it ends its
    # tasks and actors there, and the rerun below starts on the same cluster.
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "avatar_forge.cli", "batch", str(folder), str(out), "--config", str(config_path), "--no-progress"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list((out / "_rows").glob("*.json"))) < 1 and driver.poll() is None:
            time.sleep(0.5)
        assert driver.poll() is None, "the job ended before it could be interrupted"
        assert list((out / "_rows").glob("*.json")), "no row finished in time"
    finally:
        family = psutil.Process(driver.pid).children(recursive=True) if driver.poll() is None else []
        driver.kill()
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        driver.wait(timeout=30)
    finished = {p: p.stat().st_mtime_ns for p in (out / "avatars").glob("*/avatar.safetensors")}
    assert 1 <= len(finished) < 3
    summary = run_job(str(folder), str(out), config, progress=False)
    rows = _read_manifest(str(out / "manifest" / "manifest.parquet"))
    assert sorted(os.path.basename(r["source_uri"]) for r in rows) == [f"p{i}.png" for i in range(3)]
    assert all(r["status"] == "ok" for r in rows)
    assert summary["resumed"] >= len(finished)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not recomputed


def test_only_infrastructure_faults_rerun_an_attempt():
    import ray.exceptions as rex

    from jobs.batch import is_infrastructure_fault

    def wrapped(cause: BaseException) -> BaseException:
        try:
            raise RuntimeError("the dataset failed") from cause
        except RuntimeError as err:
            return err

    assert is_infrastructure_fault(rex.WorkerCrashedError())
    assert is_infrastructure_fault(wrapped(rex.NodeDiedError("node gone")))  # found under what wraps it
    assert is_infrastructure_fault(rex.RayTaskError("map", "traceback", rex.OutOfMemoryError("the node ran out of memory")))
    # A task's own error, even wrapped by Ray, is a bug: a rerun would meet it again.
    assert not is_infrastructure_fault(rex.RayTaskError("map", "traceback", ImportError("cannot import name 'FitInput'")))
    assert not is_infrastructure_fault(wrapped(ValueError("bad value")))


@pytest.mark.parametrize(
    ("argv", "passed", "source"),
    [
        (["--max-failed-ratio", "0.5"], True, "from --max-failed-ratio"),
        (["--set", "max_failed_ratio=0.4"], False, "from --set"),
        ([], False, "the default"),
    ],
)
def test_the_verdict_names_where_its_threshold_came_from(argv, passed, source):
    """The final table's verdict and the exit status for each place a threshold can come from
    (the job itself, with its config from --config, runs above)."""
    from avatar_forge.cli import EXIT_TOO_MANY_FAILED, _outcome_table, _threshold_source, batch_config, build_parser
    from jobs.batch import summarise
    from jobs.manifest import Counts

    args = build_parser().parse_args(["batch", "in", "out", *argv])
    config = batch_config(args)
    counts = Counts()
    for status, reason in [("rejected", "too_small")] * 3 + [("failed", "not_found")] * 3:
        counts.add({"status": status, "reason": reason, "resumed": False})
    summary = summarise(counts, 1.0, "in", "out", config, "run")
    assert summary["passed"] is passed and summary["failed_ratio"] == 0.5
    verdict = "passed" if passed else f"FAILED (exit {EXIT_TOO_MANY_FAILED})"
    assert f"failed rows: 3 of 6 (50.00%); max_failed_ratio {config.max_failed_ratio:g} ({source}): {verdict}" in _outcome_table({**summary, "manifest": "m"}, _threshold_source(args, config))


def test_repeated_ids_are_found_alike_on_the_driver_and_distributed(local_ray, monkeypatch):
    """Small manifests have their ids counted on the driver, large ones by a distributed group-by:
    the same ids either way. Empty ids never collide; invalid ones are left to the id check."""
    import ray.data

    from jobs import batch

    ids = ["a", "b", "a", "", "", "c", "b", "a", "x" * 200, "x" * 200, "d"]
    inputs = ray.data.from_items([{"id": i} for i in ids])
    on_driver = batch.duplicate_ids(inputs, len(ids))
    monkeypatch.setattr(batch, "DRIVER_ID_COUNT_ROWS", 0)
    distributed = batch.duplicate_ids(inputs, len(ids))
    assert on_driver == ("a", "b")
    assert set(distributed) - {"x" * 200} == {"a", "b"}  # the long id is rejected as bad_id either way
