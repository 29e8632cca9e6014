"""The job config: the shipped examples validate, and a bad file gets an error naming it and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.config import JobConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    config = JobConfig.load(path)
    assert config.pipeline.preset in ("preview", "standard", "high")
    if path.name == "gpu_cluster.yaml":
        assert config.stages.fuse == "never" and config.stages.fit.num_gpus >= 1 and config.stages.fit.batch_size > 1


def test_bad_config_names_the_file_and_key(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("stages:\n  fuse: sometimes\n")
    with pytest.raises(ValueError, match=r"(?s)job\.yaml.*stages\.fuse.*'auto', 'always' or 'never'.*sometimes"):
        JobConfig.load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping at the top level, got list"):
        JobConfig.load(bad)


def test_stage_pools_follow_fuse_and_gpu_requests():
    from jobs.batch import stage_groups

    per_stage = [["track"], ["reconstruct"], ["fit"], ["export"]]
    # A stage that asks for a GPU keeps one pool per stage under `auto` (no Ray needed to decide).
    assert stage_groups(JobConfig.model_validate({"stages": {"fit": {"num_gpus": 1}}})) == per_stage
    assert stage_groups(JobConfig.model_validate({"stages": {"fuse": "never"}})) == per_stage
    fused = JobConfig.model_validate({"stages": {"fuse": "always"}, "pipeline": {"synthesis_mode": "view"}})
    assert stage_groups(fused) == [["track", "reconstruct", "synthesize", "fit", "export"]]


def test_overrides_apply_on_top_of_the_file_and_are_validated(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("stages:\n  fit:\n    batch_size: 4\n")
    config = JobConfig.load(str(path), ["stages.fit.batch_size=2", "pipeline.preset=standard", "max_failed_ratio=0", "stages.fuse=never"])
    assert (config.stages.fit.batch_size, config.pipeline.preset, config.max_failed_ratio, config.stages.fuse) == (2, "standard", 0.0, "never")
    assert config.stages.track == JobConfig().stages.track  # untouched siblings keep their defaults
    assert JobConfig.load(None, ["attempts=5"]).attempts == 5
    with pytest.raises(ValueError, match=r"(?s)--set stages\.fit\.batch_size=zero.*stages\.fit\.batch_size.*integer"):
        JobConfig.load(str(path), ["stages.fit.batch_size=zero"])
    with pytest.raises(ValueError, match=r"(?s)--set stages\.fit\.bach_size=2.*bach_size.*[Ee]xtra"):
        JobConfig.load(None, ["stages.fit.bach_size=2"])
    with pytest.raises(ValueError, match=r"--set 'stages\.fit': expected KEY\.PATH=VALUE"):
        JobConfig.load(None, ["stages.fit"])
    with pytest.raises(ValueError, match=r"--set 'attempts\.count=2': attempts is a int, not a section"):
        JobConfig.load(None, ["attempts=3", "attempts.count=2"])
    with pytest.raises(ValueError, match=r"(?s)max_failed_ratio.*less than or equal to 1"):
        JobConfig.load(None, ["max_failed_ratio=1.5"])
    with pytest.raises(ValueError, match=r"--config .*missing\.yaml: no such file"):
        JobConfig.load(str(tmp_path / "missing.yaml"))
