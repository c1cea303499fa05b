"""One trial: a config with the sampled settings, run as an ordinary (cached, resumable) pipeline run.

Trials that share a prefix of stages (same model, data, seed and the same settings for the first k
stages: typically ``train`` and ``baseline``) reuse it: before a trial runs, the finished stage folders
of the earlier trial with the longest such prefix are hard-linked into its run folder, and the
runner's own cache check (stage key, manifest, file hashes) decides what is really reused. A wrong
guess costs a recomputation, never a wrong result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgeslim.engine.records import RunReport, StageRecord
from edgeslim.engine.runner import MEASUREMENTS_FILE
from edgeslim.engine.store import MANIFEST_FILE, read_json, write_json, write_text
from edgeslim.study.space import SearchConfig

TRIALS_DIR = "trials"
# what a trial's run must agree on with another for their stage folders to be worth sharing
CONTEXT_KEYS = ("model", "data", "seed", "host", "measure")


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_config_path(search_dir: Path, number: int) -> Path:
    return search_dir / TRIALS_DIR / f"{trial_name(number)}.yaml"


def write_trial_config(search_dir: Path, number: int, config: dict[str, Any]) -> Path:
    path = trial_config_path(search_dir, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def _stages(config: dict[str, Any]) -> list[Any]:
    return list(config.get("stages") or [])


def _shared_prefix(a: dict[str, Any], b: dict[str, Any]) -> int:
    if any(a.get(k) != b.get(k) for k in CONTEXT_KEYS):
        return 0
    n = 0
    for x, y in zip(_stages(a), _stages(b), strict=False):
        if x != y:
            break
        n += 1
    return n


def reuse_shared_stages(search_dir: Path, number: int, config: dict[str, Any]) -> list[str]:
    """Hard-link the finished stage folders of the earlier trial sharing the longest stage prefix with
    this one into this trial's run folder (copying where links are impossible), with their measurement
    cache entries. Returns the stage folders brought in."""
    run_dir = search_dir / TRIALS_DIR / trial_name(number)
    best, best_n = None, 0
    for other in sorted((search_dir / TRIALS_DIR).glob("trial-*.yaml")):
        if other.stem == trial_name(number):
            continue
        with contextlib.suppress(OSError, yaml.YAMLError):
            n = _shared_prefix(config, yaml.safe_load(other.read_text()) or {})
            if n > best_n:
                best, best_n = other.with_suffix(""), n
    if best is None or not best.is_dir():
        return []
    brought = []
    for folder in sorted(best.glob("[0-9][0-9]-*")):
        index = int(folder.name[:2])
        target = run_dir / folder.name
        if index >= best_n or target.exists() or not (folder / MANIFEST_FILE).is_file():
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        partial = run_dir / f".{folder.name}.partial"  # the runner sweeps it if this is interrupted
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folder, partial, copy_function=_link_or_copy)
        os.replace(partial, target)
        brought.append(folder.name)
    if brought:
        _merge_measurements(best / MEASUREMENTS_FILE, run_dir / MEASUREMENTS_FILE, brought)
    return brought


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _merge_measurements(source: Path, target: Path, labels: list[str]) -> None:
    try:
        theirs = read_json(source)
    except (OSError, ValueError):
        return
    try:
        ours = read_json(target)
    except (OSError, ValueError):
        ours = {}
    ours.update({k: v for k, v in theirs.items() if k in labels and k not in ours})
    write_json(target, ours)


# ---------------------------------------------------------------------- a finished run -> objectives


@dataclass(frozen=True)
class Outcome:
    """What a finished trial run delivered (the run guard's deliverable, else the final stage)."""

    stage: str
    accuracy: float  # validation
    test_accuracy: float
    latency_ms: float | None
    size_bytes: int
    reference_accuracy: float | None  # the run's reference (baseline) stage, validation

    def objective(self, name: str) -> float:
        value = {"accuracy": self.accuracy, "latency_ms": self.latency_ms, "size_bytes": float(self.size_bytes)}[name]
        if value is None:
            raise ValueError(f"the trial's final stage has no {name}")
        return value

    def violations(self, cfg: SearchConfig) -> dict[str, float]:
        """Optuna's constraint values, by constraint: <= 0 where it holds."""
        c = cfg.constraints
        values = {}
        if c.max_accuracy_drop is not None:
            drop = 0.0 if self.reference_accuracy is None else self.reference_accuracy - self.accuracy
            values["max_accuracy_drop"] = drop - c.max_accuracy_drop
        if c.max_latency_ms is not None:
            values["max_latency_ms"] = (self.latency_ms or float("inf")) - c.max_latency_ms
        if c.max_size_bytes is not None:
            values["max_size_bytes"] = float(self.size_bytes - c.max_size_bytes)
        return values


def outcome(report: RunReport) -> Outcome:
    label = report.guard.deliverable if report.guard else report.stages[-1].dir
    final = next(s for s in report.stages if s.dir == label)
    m = _metrics(final)
    reference = next((s for s in report.stages if s.role == "reference" and s.metrics), None)
    return Outcome(
        stage=final.dir,
        accuracy=m.val_accuracy,
        test_accuracy=m.accuracy,
        latency_ms=m.latency_ms.p50 if m.latency_ms else None,
        size_bytes=m.size_bytes,
        reference_accuracy=reference.metrics.val_accuracy if reference else None,
    )


def _metrics(record: StageRecord) -> Any:
    if record.metrics is None:
        raise ValueError(f"stage {record.dir} has no metrics")
    return record.metrics


# ---------------------------------------------------------------------- early stopping on the curve


class PruneTrial(BaseException):
    """Raised out of a trial's training when its curve is clearly worse. A BaseException so the
    runner treats it like a stop request: the unfinished stage is discarded, finished ones are kept."""


def median_rule(
    cfg: SearchConfig, curves: Callable[[], list[list[float]]], report: Callable[[int, float], None]
) -> Callable[[str, int, float], None]:
    """An epoch watcher (``train.loop.watch_epochs``) applying Optuna's median rule to the validation
    curve of ``cfg.pruner.stage``: it records each epoch (``report``) and raises ``PruneTrial`` when the
    accuracy is below the median of the completed trials' at the same epoch. ``curves`` gives those."""
    rule = cfg.pruner

    def watch(label: str, epoch: int, accuracy: float) -> None:
        if not label.startswith(rule.stage):
            return
        report(epoch, accuracy)
        if rule.name == "none" or epoch < rule.warmup_epochs:
            return
        at_epoch = [c[epoch] for c in curves() if len(c) > epoch]
        if len(at_epoch) >= rule.startup_trials and accuracy < statistics.median(at_epoch):
            raise PruneTrial(f"epoch {epoch + 1}: validation {accuracy:.4f} < median {statistics.median(at_epoch):.4f}")

    return watch
