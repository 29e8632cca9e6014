"""Helpers for the cluster tests: where Prometheus's binaries are, running ``promtool``, and the
series selectors of a PromQL expression (metric name and label matchers)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
#: Debian's package, unpacked by `make test` into .venv/prometheus (root/usr/bin holds both binaries).
_DEBIAN = REPO / ".venv" / "prometheus" / "root" / "usr" / "bin"

_TOKEN = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'
    r"|(?P<number>\d[\d.]*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)"
)
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_FUNCTIONS_AND_KEYWORDS = {
    "sum", "avg", "max", "min", "count", "rate", "increase", "irate", "changes", "histogram_quantile", "clamp_min",
    "clamp_max", "abs", "absent", "label_values", "and", "or", "unless", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "offset", "topk", "bottomk", "quantile", "stddev", "delta", "deriv", "vector",
}  # fmt: skip


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; skips the test when neither place has it."""
    for candidate in (os.environ.get(f"{name.upper()}_BIN"), str(_DEBIAN / name), shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(
        f"no {name}: `make test` unpacks Debian's `prometheus` package (which has it) into .venv/prometheus; set {name.upper()}_BIN otherwise"
    )


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *map(str, args)], check=False, capture_output=True, text=True, timeout=60)


def check_rules(groups: list[dict], path: Path) -> None:
    """``promtool check rules`` on ``groups`` written to ``path``: the rules parse and are valid."""
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def run_rule_tests(rule_file: Path, tests: list[dict], path: Path) -> None:
    """``promtool test rules`` with ``tests`` (its unit-test format) against ``rule_file``."""
    path.write_text(yaml.safe_dump({"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    result = promtool("test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def _tokens(expr: str) -> list[tuple[str, str, int]]:
    """``(kind, text, end)`` tokens of ``expr``: string, number, ident or other; spaces dropped."""
    return [(m.lastgroup, m.group(), m.end()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]


def selectors(expr: str) -> list[tuple[str, str]]:
    """``(metric, "{matchers}")`` for every series selector in ``expr`` (``""`` when it has none).

    Tokenised, not pattern-matched: label lists (``by (...)``, ``on (...)``), string literals,
    numbers, windows (``[5m]``), functions and keywords are no selectors. The expressions in
    cluster/ are also checked to parse by promtool.
    """
    tokens = _tokens(expr)
    texts = [text for _, text, _ in tokens]

    def close(i: int, bracket: str) -> int:
        return texts.index(bracket, i)  # no nesting inside (...) label lists, [...] windows, {...} matchers

    found, i = [], 0
    while i < len(tokens):
        kind, text, _ = tokens[i]
        following = texts[i + 1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _LABEL_LIST_KEYWORDS and following == "(":
            i = close(i, ")")
        elif kind == "other" and text == "[":
            i = close(i, "]")
        elif (kind == "ident" and text not in _FUNCTIONS_AND_KEYWORDS and following != "(") or (kind == "other" and text == "{"):
            name, matchers = (text, "") if kind == "ident" else ("", "")
            brace = i + 1 if kind == "ident" else i
            if brace < len(tokens) and texts[brace] == "{":
                end = close(brace, "}")
                matchers = expr[tokens[brace][2] - 1 : tokens[end][2]]
                i = end
            found.append((name, matchers))
        i += 1
    return found


def label_matchers(matchers: str) -> dict[str, str]:
    """``{label: 'op"value"'}`` of a selector's ``"{a="x", b!~"y"}"``."""
    pairs = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*("(?:[^"\\]|\\.)*")', matchers)
    return {label: op + value for label, op, value in pairs}


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)}
