"""Artifact store: stage folders, atomic writes, content hashes and manifests.

A stage writes into a hidden temporary folder; the runner adds ``metrics.json`` and
``manifest.json`` and then renames the folder into place. A folder without a valid manifest
is never trusted, so a kill at any point leaves either the old result or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARTIFACT_FILE = "artifact.json"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
ONNX_MODEL_FILE = "model.onnx"  # the model file of every ONNX artifact (and of the phone bundle)

# What a model artifact is, so stages can declare what they accept and produce.
TORCH = "torch"  # float PyTorch weights (+ pruning history)
TORCH_QAT = "torch-qat"  # PT2E quantization-aware model (fake-quant state)
ONNX = "onnx"  # float ONNX model
ONNX_INT8 = "onnx-int8"  # quantized ONNX model
ARTIFACT_KINDS = (TORCH, TORCH_QAT, ONNX, ONNX_INT8)


def stage_label(index: int, name: str) -> str:
    """A stage's folder name in its run, and its label in reports: ``02-prune``."""
    return f"{index:02d}-{name}"


@dataclass
class Artifact:
    """A model a stage produced: its kind, its folder, and facts later stages need.

    ``meta`` holds e.g. ``params``, ``macs``, ``files`` (role -> file name), ``quantized``.
    ``directory`` is None only for the run's source model (built from the config).
    """

    kind: str
    directory: Path | None
    meta: dict[str, Any] = field(default_factory=dict)

    def file(self, role: str) -> Path:
        if self.directory is None or role not in self.meta.get("files", {}):
            raise KeyError(f"artifact of kind {self.kind} has no '{role}' file")
        return self.directory / self.meta["files"][role]

    def save(self) -> None:
        assert self.directory is not None
        write_json(self.directory / ARTIFACT_FILE, {"kind": self.kind, "meta": self.meta})

    @classmethod
    def load(cls, directory: Path) -> Artifact:
        data = read_json(directory / ARTIFACT_FILE)
        return cls(kind=data["kind"], directory=directory, meta=data["meta"])


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(directory: Path, exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> dict[str, str]:
    """sha256 of every file below ``directory`` (relative posix path -> hash)."""
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in exclude
    }


def combined_hash(file_hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(file_hashes, sort_keys=True).encode()).hexdigest()


def partial_dir(final: Path) -> Path:
    """The hidden working folder of a stage folder being made."""
    return final.with_name(f".{final.name}.partial")


def fresh_temp_dir(final: Path) -> Path:
    """An empty hidden working folder beside ``final`` (left-overs of a killed run are removed)."""
    tmp = partial_dir(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Move a finished stage folder into place; an older result is only removed after."""
    trash = final.with_name(f".{final.name}.old")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    if trash.exists():
        shutil.rmtree(trash)
    _fsync_dir(final.parent)


def sweep_leftovers(run_dir: Path) -> list[str]:
    """Remove what a killed run leaves in its run folder; call it only while holding the run's lock.

    Unfinished stage folders (``.NN-stage.partial``), replaced ones not yet deleted (``.old``) and
    half-written files of :func:`atomic_write_bytes` (``.name.*.tmp``) are never referenced by a
    manifest or report, so they are safe to delete. Returns the names removed.
    """
    removed = []
    for path in sorted(run_dir.glob(".*")):
        if path.is_dir() and path.name.endswith((".partial", ".old")):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
        else:
            continue
        removed.append(path.name)
    return removed


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def manifest_is_valid(directory: Path, cache_key: str) -> bool:
    """True when the folder was produced from the same inputs and its files are intact."""
    try:
        manifest = read_json(directory / MANIFEST_FILE)
    except (OSError, ValueError):
        return False
    if manifest.get("cache_key") != cache_key:
        return False
    files = manifest.get("files", {})
    try:
        return bool(files) and hash_tree(directory) == files
    except OSError:
        return False
