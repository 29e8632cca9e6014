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
