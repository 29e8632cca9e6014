"""Photo -> avatar files in one process: the stage chain (:mod:`avatar_ops.stages`) run in sequence.

The ``generate`` and ``synthesize`` commands and the benches use it; the batch job and the online
API run the same stages in their own processes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from avatar_ops.body import BodyModel
from avatar_ops.io import storage
from avatar_ops.stages.config import PipelineConfig
from avatar_ops.stages.payload import Payload, decoded_payload
from avatar_ops.stages.stage import Stage, build_stages


class AvatarPipeline:
    """The stages of ``config`` built once, on one body model; ``run(uri, out_dir)`` per photo."""

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.stages: dict[str, Stage] = {stage.kind: stage for stage in build_stages(self.config)}

    @property
    def body(self) -> BodyModel:
        return self.stages["track"].body

    def run(self, source: str, out_dir: str, keypoints: list[np.ndarray] | None = None, stop_after: Literal["synthesize", "export"] = "export") -> Payload:
        """Every stage on one photo (read through fsspec; FileNotFoundError when it is missing).
        Returns its payload: ``status`` ok / rejected / failed, ``reason``, ``files``, ``seconds``,
        ``quality``; ``stop_after="synthesize"`` returns it still pending, with the synthesized
        frames in ``synthesis``, without fitting or exporting."""
        if stop_after not in ("synthesize", "export"):
            raise ValueError(f"`stop_after` must be 'synthesize' or 'export', got {stop_after!r}.")
        if stop_after == "synthesize" and "synthesize" not in self.stages:
            raise ValueError("stop_after='synthesize' needs a synthesis_mode other than 'none'.")
        payload = decoded_payload(source, storage.read_bytes(source), self.config, out_dir=out_dir, keypoints=keypoints)
        return self.run_payload(payload, stop_after)

    def run_payload(self, payload: Payload, stop_after: str = "export", start: str = "track") -> Payload:
        """The stages from ``start`` to ``stop_after``, in order, on a payload that holds what
        ``start`` needs (a decoded image for ``track``; a track too for ``reconstruct``, ...)."""
        kinds = list(self.stages)
        for name, value in (("start", start), ("stop_after", stop_after)):
            if value not in kinds:
                raise ValueError(f"`{name}` must be one of this pipeline's stages {kinds}, got {value!r}.")
        for kind in kinds[kinds.index(start) : kinds.index(stop_after) + 1]:
            self.stages[kind].run([payload])
        return payload
