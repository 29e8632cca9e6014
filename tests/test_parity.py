"""One photo through the in-process pipeline, the batch job's stages (Ray Data's adapter, without
Ray) and the Serve adapter's stage deployments (without Serve), in one process: every stage's
output must be the same, because all three run the one stage layer and carry the same payloads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avatar_ops.types import STAGE_KINDS

CONFIG = {
    "num_gaussians": 800, "fit": {"iters": 3, "resolution": 64}, "export": {"turntable_views": 2, "preview_size": 48, "animation_frames": 2, "glb_texture_size": 256, "glb_max_frames": 8},
    "tracking": {"device": "cpu", "max_reprojection_error": 10.0, "fit": {"orient_iters": 5, "keypoint_iters": 5, "iters": 5}},
}  # fmt: skip
PHOTO = "man_hoodie_masked.png"
KINDS = tuple(k for k in STAGE_KINDS if k != "synthesize")  # the config synthesizes nothing


def _track(payload) -> dict:
    t = payload.track
    return {k: torch.as_tensor(getattr(t, k)) for k in ("shape", "pose", "transl", "intrinsics", "keypoints", "projected_keypoints", "mask")}


def _avatar(avatar) -> dict:
    return {f.name: getattr(avatar, f.name) for f in dataclasses.fields(avatar) if isinstance(getattr(avatar, f.name), torch.Tensor)}


def _outputs(after: dict) -> dict:
    """What each stage gave, comparable across paths."""
    return {
        "track": _track(after["track"]),
        "reconstruct": {**_avatar(after["reconstruct"].reconstruction.avatar), "seen": after["reconstruct"].reconstruction.seen},
        "fit": _avatar(after["fit"].avatar),
        "quality": after["fit"].quality,
        "export": (after["export"].status, sorted(name.rsplit("/", 1)[-1] for name in after["export"].files.values())),
    }


def _in_process(config, source: str, out_dir: str) -> dict:
    from avatar_ops.io import storage
    from avatar_ops.pipeline import AvatarPipeline
    from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes
    from avatar_ops.stages.payload import decoded_payload

    pipeline = AvatarPipeline(config)
    payload = decoded_payload(source, storage.read_bytes(source), config, out_dir=out_dir)
    after = {}
    for kind, stage in pipeline.stages.items():
        torch.manual_seed(0)
        stage.run([payload])
        after[kind] = payload_from_bytes(payload_to_bytes(payload))  # a snapshot
    return after


def _batch(config, source: str, output: str) -> dict:
    from avatar_ops.stages.codec import payload_from_bytes
    from jobs.stages import PayloadStages, decode_batch

    config_json = config.model_dump_json()
    batch = {"row_index": np.array([0]), "id": np.array([""], dtype=object), "source_uri": np.array([source], dtype=object), "options": np.array(["{}"], dtype=object)}
    batch = decode_batch(batch, config_json, output)
    after = {}
    for kind in KINDS:
        stage = PayloadStages([kind], [1], config_json, output, threads=torch.get_num_threads())
        torch.manual_seed(0)
        batch = stage(batch)
        row = {k: v[0] for k, v in batch.items()}
        after[kind] = payload_from_bytes(row["payload"]) if row["status"] == "pending" else _finished(row)
    return after


def _finished(row: dict):
    import json

    from avatar_ops.stages.payload import Payload

    return Payload(row["source_uri"], status=row["status"], reason=row["reason"], detail=row["detail"], files=json.loads(row["files"]))


def _serve(config, source: str, out_dir: str) -> dict:
    from avatar_ops.io import storage
    from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes
    from avatar_ops.stages.payload import decoded_payload
    from serve.adapter import StageDeployment

    config_json = config.model_dump_json()
    data = payload_to_bytes(decoded_payload("upload:parity", storage.read_bytes(source), config, id="parity", out_dir=out_dir, preset=config.preset, synthesis_mode="none"))
    after = {}
    for kind in KINDS:
        deployment = StageDeployment(kind, config_json, threads=torch.get_num_threads())
        torch.manual_seed(0)
        data = deployment.run_bytes([data])[0]
        after[kind] = payload_from_bytes(data)
    return after


@pytest.fixture
def one_body(anny_body, monkeypatch):
    """Every stage on the session's body model: as built, each stage builds its own, and twelve
    builds of Anny would take most of this test's time."""
    import avatar_ops.stages.stage

    monkeypatch.setattr(avatar_ops.stages.stage, "build_body_model", lambda config, device: anny_body)
    return anny_body


def _rendered(avatar, body) -> torch.Tensor:
    cams = avatar.source_camera(64 / max(avatar.width, avatar.height))
    with torch.no_grad():
        return avatar.render(body, avatar.source_pose[None], avatar.source_transl[None], cams).rgb


def test_pipeline_batch_and_serve_stages_give_the_same_outputs(samples_dir, tmp_path, one_body):
    from avatar_ops.avatar.fit import FittingOperator
    from avatar_ops.stages.config import PipelineConfig

    config = PipelineConfig.model_validate(CONFIG)
    source = str(samples_dir / PHOTO)
    paths = {
        "pipeline": _in_process(config, source, str(tmp_path / "pipeline")),
        "batch": _batch(config, source, str(tmp_path / "batch")),
        "serve": _serve(config, source, str(tmp_path / "serve")),
    }
    for name, after in paths.items():
        assert tuple(after) == KINDS, name
        assert all(p.status in ("pending", "ok") for p in after.values()), (name, [(p.status, p.reason, p.detail[:300]) for p in after.values()])
    outputs = {name: _outputs(after) for name, after in paths.items()}
    reference = outputs["pipeline"]
    assert reference["export"][0] == "ok" and "avatar.safetensors" in reference["export"][1]
    # A rotation whose gradient is at rounding noise takes Adam steps of either sign: up to one
    # learning rate per iteration (the fit's backward sums in no fixed order over threads).
    rotation_atol = config.fit.iters * config.fit.lr * FittingOperator.LR_FACTORS["rotation"]
    for name in ("batch", "serve"):
        for stage in ("track", "reconstruct"):
            # The same code on the same inputs in one process: equal up to float32 rounding.
            torch.testing.assert_close(outputs[name][stage], reference[stage], msg=lambda m, n=name, s=stage: f"{n} {s}: {m}")
        fit, ref = dict(outputs[name]["fit"]), dict(reference["fit"])
        torch.testing.assert_close(fit.pop("rotation"), ref.pop("rotation"), atol=rotation_atol, rtol=0)
        torch.testing.assert_close(fit, ref, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n} fit: {m}")
        torch.testing.assert_close(_rendered(paths[name]["fit"].avatar, one_body), _rendered(paths["pipeline"]["fit"].avatar, one_body), atol=1e-3, rtol=0)
        assert outputs[name]["quality"] == pytest.approx(reference["quality"], rel=1e-4, abs=1e-4), name
        assert outputs[name]["export"] == reference["export"], name
