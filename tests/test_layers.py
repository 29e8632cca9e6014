"""The import structure runs one way: every import (module level or inside a function) of every
module, walked with ``ast``, goes to the same floor or a lower one, and the packages form no cycle.

    avatar_forge.cli                       the command line: drives both adapters
    jobs | serve                           the adapters (Ray Data, Serve), which never import each other
    avatar_forge.metrics                   the metrics both record
    avatar_ops.pipeline                    the stages in one process
    avatar_ops.stages                      the stage layer: config, payloads, codec, Stage, chain
    avatar_ops.{tracking,avatar,synthesis} the operators
    avatar_ops.{io,body,render,motion,viewer} shared pieces: no operator, no stage
    avatar_ops.types
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("avatar_ops", "jobs", "serve", "avatar_forge")
FLOORS = {
    "avatar_ops.types": 0,
    "avatar_ops.io": 1, "avatar_ops.body": 1, "avatar_ops.render": 1, "avatar_ops.motion": 1, "avatar_ops.viewer": 1,
    "avatar_ops.tracking": 2, "avatar_ops.avatar": 2, "avatar_ops.synthesis": 2,
    "avatar_ops.stages": 3,
    "avatar_ops.pipeline": 4,
    "avatar_forge.metrics": 5,
    "jobs": 6, "serve": 6,
    "avatar_forge.cli": 7,
}  # fmt: skip
#: Units of one floor that must not import each other.
STRANGERS = [{"jobs", "serve"}]


def unit(module: str) -> str | None:
    """The floor unit a dotted module name belongs to (None: not ours, or a package's __init__)."""
    for name in sorted(FLOORS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def edges(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> the modules where it happens."""
    out: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            source = unit(module_name(path, root))
            if source is None:
                continue
            for name in imports(path, root):
                target = unit(name)
                where = module_name(path, root)
                if target is not None and target != source and where not in out.get((source, target), []):
                    out.setdefault((source, target), []).append(where)
    return out


def test_every_module_sits_on_a_floor():
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = module_name(path)
            assert unit(name) is not None or name in PACKAGES, f"{name} is on no floor of tests/test_layers.py"


def test_no_import_runs_back_up_a_floor():
    upward = {pair: where for pair, where in edges().items() if FLOORS[pair[1]] > FLOORS[pair[0]]}
    assert not upward, "imports running up a floor: " + "; ".join(f"{a} -> {b} (in {', '.join(w)})" for (a, b), w in upward.items())


@pytest.mark.parametrize("pair", STRANGERS, ids=lambda p: " / ".join(sorted(p)))
def test_adapters_do_not_import_each_other(pair):
    a, b = sorted(pair)
    found = edges()
    assert (a, b) not in found and (b, a) not in found, found.get((a, b)) or found.get((b, a))


def test_the_packages_form_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b in edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_library_imports_no_ray_and_no_adapter():
    for path in (ROOT / "avatar_ops").rglob("*.py"):
        bad = {name for name in imports(path) if name.split(".")[0] in ("ray", "jobs", "serve", "avatar_forge")}
        assert not bad, f"{module_name(path)} imports {sorted(bad)}"


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The checker itself: lazy and relative imports inside a function count (what hid the old loops)."""
    package = tmp_path / "avatar_ops" / "io"
    package.mkdir(parents=True)
    (package / "thing.py").write_text("def f():\n    from avatar_ops.avatar.model import GaussianAvatar\n    from ..stages import codec\n")
    assert {"avatar_ops.avatar.model", "avatar_ops.stages", "avatar_ops.stages.codec"} <= imports(package / "thing.py", tmp_path)
    found = edges(tmp_path)
    assert ("avatar_ops.io", "avatar_ops.avatar") in found and ("avatar_ops.io", "avatar_ops.stages") in found
