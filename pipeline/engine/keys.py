"""Cache keys: one that says when a stage's *model* must be made again, and a separate one that
says when a made model must be *measured* again (Olive's run cache vs evaluation cache).

Stage key = stage type + its settings (guard included) + what its plan says it depends on
(run-level settings, input files' bytes) + upstream output hashes + data fingerprint + seed +
position + versions of the packages that affect numerics + the **code version of that stage**:
a hash of its module and every edgeslim module it imports, transitively, plus the engine modules
that judge every stage's output (evaluation, accuracy guard, artifact store). Editing the report,
the CLI, ``compare`` or the latency code changes no stage key.

Measurement key = the sha256 of every file timed side by side (the stage's deployable, the
previous stage's, the baseline's) + ``measure:`` settings + host profile + the code version of the
measurement modules. Changing any of these re-measures; nothing is retrained.
"""

from __future__ import annotations

import ast
import importlib.util
import platform
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeslim.config.schema import HostProfile, MeasureSpec, canonical_hash
from edgeslim.engine.store import combined_hash, sha256_file

# Packages whose versions change what a stage computes (not rich, pydantic, matplotlib ...).
NUMERIC_PACKAGES = (
    "torch",
    "torch-pruning",
    "torchao",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
    "neural-compressor",
    "scikit-learn",
)
# Engine modules that decide every stage's recorded output, whichever stage it is.
STAGE_ENGINE_MODULES = ("edgeslim.engine.evaluate", "edgeslim.engine.guard", "edgeslim.engine.store")
# Plumbing that cannot change what is computed (progress bars; starting helper processes): editing
# it re-runs nothing. Only modules with no numerics belong here.
NON_NUMERIC_MODULES = frozenset({"edgeslim.engine.progress", "edgeslim.engine.children"})
MEASUREMENT_MODULES = ("edgeslim.engine.measure",)


# Hugging Face's modeling code computes a Hugging Face model's outputs: part of those runs' keys only.
HUGGING_FACE_PACKAGES = ("transformers",)


def versions_of(*names: str) -> dict[str, str]:
    """Installed versions of these distributions ("not installed" where absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def package_versions(hugging_face: bool = False) -> dict[str, str]:
    """Python and the numeric packages' versions: part of every stage key (plus transformers' for a
    run whose model is a Hugging Face model)."""
    extra = HUGGING_FACE_PACKAGES if hugging_face else ()
    return {"python": platform.python_version(), **versions_of(*NUMERIC_PACKAGES, *extra)}


@cache
def _module_file(name: str) -> Path | None:
    """The source file of an edgeslim module, or None when ``name`` is not a module (e.g. a class)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST) -> set[str]:
    """Every ``edgeslim`` module a file imports, at any depth (lazy imports in functions count:
    they run too), except under ``if TYPE_CHECKING:``."""
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgeslim")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgeslim":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


@cache
def _direct_imports(name: str) -> frozenset[str]:
    path = _module_file(name)
    if path is None:
        return frozenset()
    names = _imported_names(ast.parse(path.read_text(), str(path)))
    return frozenset(n for n in names if n != "edgeslim" and _module_file(n) is not None)


def module_closure(*roots: str) -> list[str]:
    """``roots`` and every edgeslim module they import, transitively (sorted)."""
    seen: set[str] = set()
    todo = [r for r in roots if _module_file(r) is not None]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_direct_imports(name) - seen)
    return sorted(seen)


def code_version(*roots: str) -> str:
    """sha256 over the source of ``roots`` and their transitive edgeslim imports (plumbing excepted)."""
    files = {name: _module_file(name) for name in module_closure(*roots) if name not in NON_NUMERIC_MODULES}
    return combined_hash({name: sha256_file(path) for name, path in files.items() if path is not None})


def stage_code_version(stage_class: type) -> str:
    """The code version of one stage: its module's closure plus the engine's judging modules."""
    return code_version(stage_class.__module__, *STAGE_ENGINE_MODULES)


def measurement_code_version() -> str:
    return code_version(*MEASUREMENT_MODULES)


def file_hashes(files: tuple[Path, ...] | list[Path]) -> dict[str, str]:
    return {str(path): sha256_file(path) for path in files}


def stage_key(
    *,
    stage: str,
    settings: dict[str, Any],
    key_parts: dict[str, Any],
    input_files: dict[str, str],
    upstream: list[str],
    data_fingerprint: str,
    seed: int,
    index: int,
    versions: dict[str, str],
    code: str,
) -> str:
    """When this changes, the stage's model is made again (and everything after it)."""
    return canonical_hash(
        {
            "stage": stage,
            "settings": settings,
            "key_parts": key_parts,
            "input_files": input_files,
            "upstream": upstream,
            "data": data_fingerprint,
            "seed": seed,
            "index": index,
            "versions": versions,
            "code": code,
        }
    )


def measurement_key(models: Mapping[str, str], spec: MeasureSpec, host: HostProfile, code: str) -> str:
    """When this changes, a made model is timed again; nothing is retrained.

    ``models``: the sha256 of every file timed side by side, by role (``stage``, ``previous``,
    ``reference``): a stage is re-measured when its own model or one it is compared with changes.
    ``eval_batch_size`` is left out: it only sets how many samples an evaluation runs at once."""
    return canonical_hash(
        {
            "models": dict(models),
            "measure": spec.model_dump(mode="json", exclude={"eval_batch_size"}),
            "host": host.model_dump(mode="json"),
            "code": code,
        }
    )
