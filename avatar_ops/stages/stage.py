"""``Stage(kind, config).run(payloads)``: one operator stage over a batch of payloads.

A stage works on the pending payloads it applies to and passes the others through untouched, so
no item is ever dropped. Items are grouped by their preset (one operator per preset, built on
first use); the whole batch runs at once and, if that raises, item by item, so only the item that
still raises fails (``failed``, reason ``exception``) and the others go on. What each stage takes
from a payload and gives back is written here, once, for every adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from avatar_ops.avatar.export import export_avatar
from avatar_ops.avatar.fit import FitInput, FittingOperator
from avatar_ops.avatar.reconstruct import ReconstructInput, ReconstructionOperator
from avatar_ops.body import BodyModel, build_body_model, resolve_device
from avatar_ops.stages.config import PipelineConfig
from avatar_ops.stages.payload import Payload, rejected
from avatar_ops.synthesis.operator import SynthesisInput, SynthesisOperator, SynthesisResult
from avatar_ops.tracking.operator import TrackingOperator, TrackInput
from avatar_ops.types import STAGE_KINDS, Rejected, StageKind

log = logging.getLogger("avatar_forge.stages")


class StageObserver(Protocol):
    """What an adapter's metrics hear from a stage (``jobs`` and ``serve`` pass theirs)."""

    def started(self, rows: int) -> None: ...

    def finished(self, outcomes: list[tuple[str, str, float]]) -> None: ...


def chain(config: PipelineConfig) -> tuple[StageKind, ...]:
    """The stages ``config`` runs, in order (``synthesize`` only with a synthesis mode)."""
    return tuple(k for k in STAGE_KINDS if k != "synthesize" or config.synthesis_mode != "none")


def run_isolated(process: Callable[[list], list], items: Sequence, on_error: Callable[[Any, Exception], Any]) -> tuple[list, list[float]]:
    """``process(items)`` (one output per item) on the whole batch; if that raises, item by item,
    an item that still raises giving ``on_error(item, err)``, so only the culprit fails. Returns
    the outputs and the seconds each item took."""
    t0 = time.perf_counter()
    try:
        out = process(list(items))
        return out, [(time.perf_counter() - t0) / len(items)] * len(items)
    except Exception:  # noqa: BLE001 - isolate the item that raises; the others go on
        pass
    out, spent = [], []
    for item in items:
        t1 = time.perf_counter()
        try:
            out.append(process([item])[0])
        except Exception as err:  # noqa: BLE001
            out.append(on_error(item, err))
        spent.append(time.perf_counter() - t1)
    return out, spent


def failure(kind: str, err: Exception) -> dict[str, str]:
    """The changes for an item whose stage raised: a one-line detail, what callers may show
    clients (the caller logs the traceback)."""
    message = str(err).splitlines()[0][:300] if str(err) else ""
    return {"status": "failed", "reason": "exception", "detail": f"{kind}: {type(err).__name__}: {message}"}


def fit_labels(result: SynthesisResult | None) -> list:
    """The pseudo-labels the fit uses: refined frames only (unrefined hints are the avatar's own
    renders and would teach it nothing)."""
    return result.pseudo_labels() if result is not None and result.refined else []


def merged_quality(payload: Payload, fit_quality: dict) -> dict[str, float]:
    """Every stage's figures, prefixed by stage."""
    synthesis = payload.synthesis.summary() if payload.synthesis is not None else {}
    return {
        **{f"track_{k}": v for k, v in payload.track.quality.items()}, **{f"reconstruct_{k}": v for k, v in payload.reconstruction.quality.items()},
        **{f"synthesis_{k}": v for k, v in synthesis.items()}, **{f"fit_{k}": v for k, v in fit_quality.items()},
    }  # fmt: skip


class Stage:
    """One operator stage (``kind``: track, reconstruct, synthesize, fit or export), built once per
    process: the operator loads its weights here. Stages sharing a process pass the ``body`` the
    first one built (from the same config); ``observer`` hears every batch (metrics)."""

    def __init__(self, kind: StageKind, config: PipelineConfig, body: BodyModel | None = None, observer: StageObserver | None = None) -> None:
        if kind not in STAGE_KINDS:
            raise ValueError(f"`kind` must be one of {STAGE_KINDS}, got {kind!r}.")
        self.kind, self.config, self.observer = kind, config, observer
        self._operators: dict[str, Any] = {}
        self.body = build_body_model(config.tracking.body, resolve_device(config.tracking.device)) if body is None else body
        if kind == "track":
            self._operators[config.preset] = TrackingOperator.from_config(config.tracking, body=self.body)
        self.operator(config.preset)  # what loads, loads now

    def operator(self, preset: str | None = None):
        """The operator of ``preset`` (default: the config's); None for export, which needs only the body."""
        preset = preset or self.config.preset
        if preset not in self._operators:
            config = self.config.with_preset(preset)
            build = {
                "track": lambda: self._operators[self.config.preset],  # tracking does not depend on the preset
                "reconstruct": lambda: ReconstructionOperator.from_config(config.reconstruct_config(), body=self.body),
                "synthesize": lambda: SynthesisOperator.from_config(config.synthesis, body=self.body),
                "fit": lambda: FittingOperator.from_config(config.fit_config(), body=self.body),
                "export": lambda: None,
            }[self.kind]
            self._operators[preset] = build()
        return self._operators[preset]

    def check_health(self) -> None:
        """Raise if the stage cannot serve (its body's forward pass must work)."""
        self.body.check_health()

    def applies(self, payload: Payload) -> bool:
        """Whether this stage has work for ``payload`` (pending; synthesis only when asked for)."""
        return payload.pending and (self.kind != "synthesize" or self._mode(payload) != "none")

    def run(self, payloads: list[Payload]) -> list[Payload]:
        """The stage on ``payloads`` (updated in place and returned, in order)."""
        todo = [p for p in payloads if self.applies(p)]
        if not todo:
            return payloads
        if self.observer is not None:
            self.observer.started(len(todo))
        changes, spent = run_isolated(self._changes, todo, self._failed)
        for payload, change, seconds in zip(todo, changes, spent):
            payload.update(change)
            payload.add_seconds(self.kind, seconds)
        if self.observer is not None:
            self.observer.finished([(p.status, p.reason, s) for p, s in zip(todo, spent)])
        return payloads

    def _failed(self, payload: Payload, err: Exception) -> dict:
        log.error("the %s stage raised on %s", self.kind, payload.source, exc_info=err)
        return failure(self.kind, err)

    def _mode(self, payload: Payload) -> str:
        return payload.synthesis_mode or self.config.synthesis_mode

    def _changes(self, items: list[Payload]) -> list[dict]:
        """Each item's changes, in order, one operator call per preset; changes nothing itself, so
        a batch that raises can be rerun item by item."""
        out: list[dict] = [{}] * len(items)
        presets = [p.preset or self.config.preset for p in items]
        for preset in dict.fromkeys(presets):
            index = [i for i, p in enumerate(presets) if p == preset]
            group = [items[i] for i in index]
            for i, change in zip(index, getattr(self, f"_{self.kind}")(self.operator(preset), group, preset)):
                out[i] = change
        return out

    # What each kind takes from a payload and gives back.
    def _track(self, op, items: list[Payload], preset: str) -> list[dict]:
        results = op([TrackInput(p.image, p.keypoints) for p in items])
        return [rejected(r) if isinstance(r, Rejected) else {"track": r} for r in results]

    def _reconstruct(self, op, items: list[Payload], preset: str) -> list[dict]:
        results = op([ReconstructInput(p.track, p.image.rgb) for p in items])
        return [rejected(r) if isinstance(r, Rejected) else {"reconstruction": r} for r in results]

    def _synthesize(self, op, items: list[Payload], preset: str) -> list[dict]:
        results = op([SynthesisInput(p.reconstruction.avatar, p.image.rgb, self._mode(p)) for p in items])
        return [{"synthesis": r} for r in results]

    def _fit(self, op, items: list[Payload], preset: str) -> list[dict]:
        outcomes = op([FitInput(p.reconstruction, p.image.rgb, fit_labels(p.synthesis)) for p in items])
        return [{"avatar": o.avatar, "quality": merged_quality(p, o.quality), "reconstruction": None, "synthesis": None} for p, o in zip(items, outcomes)]

    def _export(self, op, items: list[Payload], preset: str) -> list[dict]:
        config = self.config.with_preset(preset)
        out = []
        for p in items:
            if p.out_dir is None:
                raise ValueError(f"the export stage needs the payload's `out_dir`, got None for {p.source!r}.")
            extra = {"source": p.source, "preset": config.preset, "config_digest": config.digest(), "tracking": p.track.to_json(), "quality": p.quality}
            if p.id is not None:
                extra = {"id": p.id, **extra}
            files = export_avatar(p.avatar, self.body, p.out_dir, extra=extra, photo=p.image.rgb, **config.export.model_dump())
            out.append({"status": "ok", "files": files})
        return out


def build_stages(config: PipelineConfig, kinds: Sequence[StageKind] | None = None, observer_for: Callable[[str], StageObserver | None] | None = None) -> list[Stage]:
    """The stages ``kinds`` (default: :func:`chain` of ``config``) on one shared body model."""
    stages: list[Stage] = []
    body = None
    for kind in chain(config) if kinds is None else kinds:
        stage = Stage(kind, config, body, observer_for(kind) if observer_for else None)
        body = stage.body
        stages.append(stage)
    return stages
