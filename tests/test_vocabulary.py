"""One vocabulary, defined once in ``avatar_ops.types``: the presets and synthesis modes the CLI,
Serve and the configs accept, and every reason the code can give a rejected or failed item, each
with a metrics class (so no dashboard shows a real reason as ``other`` or maps one nothing gives)."""

from __future__ import annotations

import ast
import pathlib

import pytest

from avatar_forge.cli import build_parser
from avatar_forge.metrics import reason_class
from avatar_ops.avatar.fit import PRESET_SETTINGS
from avatar_ops.stages.config import PipelineConfig
from avatar_ops.types import FAILURE_REASONS, PRESETS, REJECT_REASONS, SYNTHESIS_KINDS, SYNTHESIS_MODES, Rejected

ROOT = pathlib.Path(__file__).resolve().parents[1]


PACKAGES = ("avatar_ops", "jobs", "serve", "avatar_forge")


def _trees():
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _literal_reasons(function: str, position: int) -> set[str]:
    """String constants passed as argument ``position`` to calls of ``function`` anywhere in the
    project's packages."""
    found = set()
    for _, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or len(node.args) <= position:
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            arg = node.args[position]
            if name == function and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def _keyword_reasons() -> set[str]:
    """String constants passed as ``reason=`` to any call (a payload finished by an adapter)."""
    return {
        kw.value.value
        for _, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "reason" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str) and kw.value.value
    }


def _status_reasons(paths: tuple[str, ...] | None = None) -> set[str]:
    """The reasons written as literals into dicts with ``status`` and ``reason`` (stage changes,
    Serve's avatar status)."""
    found = set()
    for path, tree in _trees():
        if paths is not None and str(path.relative_to(ROOT)) not in paths:
            continue
        for node in ast.walk(tree):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)} if isinstance(node, ast.Dict) else set()
            if {"status", "reason"} <= keys:
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "reason" and isinstance(value, ast.Constant) and value.value:
                        found.add(value.value)
    return found


def test_every_reason_given_is_defined_and_has_a_class():
    rejected = _literal_reasons("Rejected", 0)
    finished = _keyword_reasons() | _status_reasons()
    # The search finds what is there (a broken walk would find nothing and pass).
    assert {"truncated_image", "no_person", "fit_failed", "reconstruction_failed"} <= rejected
    assert {"not_found", "bad_keypoints", "exception", "interrupted"} <= finished
    assert rejected <= set(REJECT_REASONS), rejected - set(REJECT_REASONS)
    assert finished <= set(REJECT_REASONS) | set(FAILURE_REASONS), finished - set(REJECT_REASONS) - set(FAILURE_REASONS)
    for reason in {**REJECT_REASONS, **FAILURE_REASONS}:
        assert reason_class(reason) not in ("other", "none"), reason
    # Every defined reason is given somewhere (none is mapped that nothing emits).
    emitted = rejected | finished | _literal_reasons("_http_error", 1)
    assert set(REJECT_REASONS) | set(FAILURE_REASONS) <= emitted, (set(REJECT_REASONS) | set(FAILURE_REASONS)) - emitted


def test_serve_and_the_stages_fail_with_defined_reasons():
    found = _status_reasons(("serve/app.py", "avatar_ops/stages/stage.py"))
    assert {"exception", "interrupted"} <= found
    assert found <= set(FAILURE_REASONS), found - set(FAILURE_REASONS)


def test_an_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="reason.*one of.*got 'too_few_visible'"):
        Rejected("too_few_visible", "nothing gives this")


def _choices(parser, command: str, option: str) -> tuple:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # argparse keeps no public map
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_presets_and_modes_come_from_one_place():
    assert tuple(PRESET_SETTINGS) == PRESETS
    assert set(SYNTHESIS_KINDS) < set(SYNTHESIS_MODES)
    parser = build_parser()
    assert _choices(parser, "generate", "--preset") == PRESETS
    assert _choices(parser, "generate", "--synthesis-mode") == SYNTHESIS_MODES
    for preset in PRESETS:
        assert PipelineConfig(preset=preset).preset == preset
    with pytest.raises(ValueError, match="preset"):
        PipelineConfig(preset="ultra")
    with pytest.raises(ValueError, match="synthesis_mode"):
        PipelineConfig(synthesis_mode="views")
