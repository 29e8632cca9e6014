"""The batch job's configuration: what to compute (``pipeline``, hashed into avatar ids) and how
to schedule it (``stages``, ``ray``, ``attempts``; not hashed). Loaded from YAML with safe_load."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from avatar_ops.io import storage
from avatar_ops.stages.config import PipelineConfig
from avatar_ops.types import FrozenConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class StageResources(FrozenConfig):
    """Scheduling of one stage."""

    min_actors: int = Field(1, ge=1, description="Smallest actor pool (actor stages).")
    max_actors: int = Field(1, ge=1, description="Largest actor pool (actor stages).")
    num_cpus: float = Field(0.25, ge=0, description="CPUs per task or actor (logical; 4 actor stages at 0.25 leave a 2-core machine room for decode tasks).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (the operators then run on CUDA).")
    batch_size: int = Field(4, ge=1, description="Rows per call.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads per actor (None: every core of the node; Ray would otherwise pin fractional-CPU actors to one thread).")


def _apply_override(data: dict, override: str) -> None:
    """``key.path=value`` into the nested mapping ``data`` (the value parsed as YAML: numbers,
    booleans, null, lists); the result is validated with the rest of the config."""
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"--set {override!r}: expected KEY.PATH=VALUE, for example stages.fit.batch_size=2.")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"--set {override!r}: the value is not valid YAML: {err}") from err
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {override!r}: {'.'.join(parts[: depth + 1])} is a {type(child).__name__}, not a section with keys.")
        node = child
    node[parts[-1]] = value


def _stage(batch_size: int = 4, **kw) -> StageResources:
    return StageResources(batch_size=batch_size, **kw)


class StagesConfig(FrozenConfig):
    fuse: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Run the actor stages (track .. export) one after another inside one actor pool (the pool and batch "
        "size of `track`, the largest CPU and GPU request of the stages) instead of one pool per stage. auto: fuse when "
        "no stage asks for GPUs and the Ray cluster has none, where separate pools only compete for the same cores; "
        "otherwise one pool per stage, each scaling on its own.",
    )
    decode: StageResources = Field(default_factory=lambda: _stage(8, num_cpus=0.1))
    track: StageResources = Field(default_factory=lambda: _stage(8))
    reconstruct: StageResources = Field(default_factory=lambda: _stage(4))
    synthesize: StageResources = Field(default_factory=lambda: _stage(1), description="Runs only when pipeline.synthesis_mode is not `none`; give it the GPUs.")
    fit: StageResources = Field(default_factory=lambda: _stage(1))
    export: StageResources = Field(default_factory=lambda: _stage(1))


class RayConfig(FrozenConfig):
    address: str | None = Field(None, description="Cluster address; None: $RAY_ADDRESS if set, else an embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (None: all).")
    max_restarts: int = Field(3, ge=0, description="Restarts of a stage actor that died.")
    max_task_retries: int = Field(3, ge=0, description="Retries of a call on a restarted actor, and of a failed task.")


class InputConfig(FrozenConfig):
    extensions: tuple[str, ...] = Field(IMAGE_EXTENSIONS, description="File name endings taken from a folder or prefix (case-insensitive).")
    listing_chunk: int = Field(10_000, ge=1, description="Paths held in the driver at once while listing a folder.")


class JobConfig(FrozenConfig):
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    inputs: InputConfig = Field(default_factory=InputConfig)
    attempts: int = Field(3, ge=1, description="Whole-job attempts: after a lost node or driver error the job runs again and skips finished rows.")
    max_failed_ratio: float = Field(
        0.05, ge=0, le=1,
        description="The job exits non-zero when more than this share of its rows `failed` (our errors or the infrastructure's; "
        "`rejected` inputs never count). 0: any failed row fails the job; 1: never.",
    )  # fmt: skip

    @classmethod
    def load(cls, uri: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
        """From a YAML file at a local path or any fsspec URI (None: defaults), with ``overrides``
        (``key.path=value``, the value read as YAML) applied on top, all validated together.
        Errors name the file or override and the bad key."""
        data: dict = {}
        if uri is not None:
            try:
                text = storage.read_bytes(str(uri)).decode()
            except FileNotFoundError as err:
                raise ValueError(f"--config {uri}: no such file.") from err
            except UnicodeDecodeError as err:
                raise ValueError(f"--config {uri}: not UTF-8 text: {err}") from err
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"--config {uri}: not valid YAML: {err}") from err
            if not isinstance(data, dict):
                raise ValueError(f"--config {uri}: expected a mapping at the top level, got {type(data).__name__}.")
        for override in overrides:
            _apply_override(data, override)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            where = " and ".join(filter(None, [f"--config {uri}" if uri is not None else "", "--set " + " --set ".join(overrides) if overrides else ""]))
            raise ValueError(f"{where or 'the job config'}: {err}") from err

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
