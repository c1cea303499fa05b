"""The package layout: one ``edgeslim`` namespace, no import cycles, tests that mirror the code."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import edgeslim
from edgeslim.engine import keys

ROOT = Path(__file__).resolve().parents[2]
SOURCE = {"edgeslim": ROOT / "pipeline", "edgeslim.stages": ROOT / "stages"}


def all_modules() -> list[str]:
    names = []
    for package, folder in SOURCE.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "edgeslim" and parts[:1] == ["stages"]:
                continue
            names.append(".".join([package, *parts]))
    return names


def import_graph() -> dict[str, set[str]]:
    return {name: set(keys._direct_imports(name)) for name in all_modules()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    """Function-level (lazy) imports count too: a cycle hidden in a function is still a cycle."""
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_engine_never_imports_stages_reports_or_the_cli():
    for name, imports in import_graph().items():
        if name.startswith(("edgeslim.engine.", "edgeslim.config.")):
            bad = {i for i in imports if i.startswith(("edgeslim.stages", "edgeslim.reports", "edgeslim.cli"))}
            assert not bad, f"{name} imports {bad}"


def test_stages_never_import_each_other():
    for name, imports in import_graph().items():
        if name.startswith("edgeslim.stages."):
            assert not {i for i in imports if i.startswith("edgeslim.stages")}, name


def test_packages_in_pyproject_match_the_folders():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"edgeslim": "pipeline", "edgeslim.stages": "stages"}
    on_disk = {
        ".".join(["edgeslim", *p.parent.relative_to(ROOT / "pipeline").parts])
        for p in ROOT.glob("pipeline/**/__init__.py")
    }
    on_disk.add("edgeslim.stages")
    assert set(config["packages"]) == on_disk


def test_no_code_imports_the_folder_names():
    """``pipeline`` and ``stages`` are folders, not import names: everything goes through ``edgeslim``."""
    for folder in ("pipeline", "stages", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in ("pipeline", "stages"), f"{path}: import {name}"


def test_public_api():
    for name in edgeslim.__all__:
        assert getattr(edgeslim, name) is not None
    assert issubclass(edgeslim.UserError, Exception)


def test_tests_mirror_the_package():
    """Every subpackage of edgeslim has a test folder of the same name under tests/pipeline."""
    for init in (ROOT / "pipeline").glob("*/__init__.py"):
        if init.parent.is_symlink():
            continue
        assert (ROOT / "tests" / "pipeline" / init.parent.name).is_dir(), init.parent.name
