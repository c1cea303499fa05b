"""Run ``edgeslim`` in real processes and interrupt it: shared by the reliability tests and
``bench/reliability.py`` (which repeats the kills at many more random points).

The run is a small real pipeline with every stage type (digits slice, tiny CNN), so a kill can
land inside each of them in well under a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeslim.engine.store import MANIFEST_FILE, hash_tree, read_json

__all__ = ["hash_tree"]
from tests.conftest import small_config, write_config

ROOT = Path(__file__).resolve().parents[2]
RUN = "t"
STAGES: list[Any] = [
    {"train": {"epochs": 4, "batch_size": 32, "optimizer": {"lr": 0.01}}},
    "baseline",
    {"prune": {"importance": "taylor", "pruning_ratio": 0.3, "calibration_samples": 64}},
    {"finetune": {"epochs": 1, "batch_size": 32, "distill": {"teacher": "baseline"}}},
    "export",
    # INT8 is slower than float on this tiny model, and never_slower would (rightly) ship float: these
    # tests pin caching and crash safety of the INT8 path, so they keep it regardless of timing
    {"quantize": {"calibration_samples": 64, "never_slower": False}},
    {"benchmark": {"runs": 20, "warmup": 2, "batch_sizes": [1, 4]}},
]
STAGE_DIRS = [f"{i:02d}-{next(iter(s)) if isinstance(s, dict) else s}" for i, s in enumerate(STAGES)]
REPORT_FILES = {"report.json", "report.md", "report.html", "measurements.json", "error.log"}  # run-level files


def write_run_config(directory: Path, stages: list[Any] = STAGES) -> Path:
    return write_config(directory / "run.yaml", small_config(stages))


def start(config: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "edgeslim.cli", "run", str(config), "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr


def run(config: Path, out: Path, *extra: str) -> tuple[int, str]:
    return finish(start(config, out, *extra))


def partial_dir(out: Path, index: int) -> Path:
    return out / RUN / f".{STAGE_DIRS[index]}.partial"


def wait_inside(proc: subprocess.Popen[str], out: Path, index: int, timeout: float = 300) -> bool:
    """Wait until the run is working on stage ``index`` (its unfinished folder exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if partial_dir(out, index).is_dir():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


@dataclass
class Kill:
    stage: int  # the stage the kill was aimed at
    delay_s: float  # seconds after the stage started
    landed: str | None  # the unfinished stage folder present at the moment of the kill
    orphans: list[str]  # helper processes still alive afterwards (should be none)


def kill_inside(config: Path, out: Path, index: int, delay_s: float, sig: int = signal.SIGKILL, *extra: str) -> Kill:
    """Start a run, send ``sig`` ``delay_s`` seconds into stage ``index``, and wait for it to die."""
    proc = start(config, out, *extra)
    if not wait_inside(proc, out, index):
        code, stderr = finish(proc)
        raise AssertionError(f"stage {index} never started (exit {code}): {stderr[-2000:]}")
    time.sleep(delay_s)
    landed = [p.name for p in (out / RUN).glob(".*.partial")]
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    time.sleep(0.5)  # children die with their parent (PR_SET_PDEATHSIG); give the kernel a moment
    return Kill(index, delay_s, landed[0] if landed else None, orphans(out))


def orphans(out: Path) -> list[str]:
    """Processes whose command line mentions this output folder (latency runners, converters)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in text and str(os.getpid()) != cmdline.parent.name:
            found.append(text[:200])
    return found


def stage_stamps(out: Path) -> dict[str, int]:
    """Inode of each finished stage's manifest: a redone stage gets a new one."""
    return {
        d.name: (d / MANIFEST_FILE).stat().st_ino
        for d in sorted((out / RUN).iterdir())
        if d.is_dir() and (d / MANIFEST_FILE).is_file()
    }


def folder_problems(out: Path) -> list[str]:
    """Anything in the run folder that is partial or not referenced by a manifest or the report."""
    run_dir = out / RUN
    problems = []
    report = read_json(run_dir / "report.json")
    referenced = {s["dir"] for s in report["stages"]}
    for path in sorted(run_dir.iterdir()):
        if path.is_dir() and path.name in referenced:
            manifest = read_json(path / MANIFEST_FILE)
            on_disk = hash_tree(path)
            if on_disk != manifest["files"]:
                problems.append(f"{path.name}: files differ from its manifest")
        elif path.name not in REPORT_FILES:
            problems.append(f"unreferenced: {path.name}")
    return problems


def stage_outcomes(out: Path) -> list[dict[str, Any]]:
    """Per stage: status, the model's output hash and the metrics that must not depend on timing."""
    run_dir = out / RUN
    rows = []
    for stage in read_json(run_dir / "report.json")["stages"]:
        manifest = read_json(run_dir / stage["dir"] / MANIFEST_FILE)
        metrics = stage["metrics"]
        rows.append(
            {
                "dir": stage["dir"],
                "status": stage["status"],
                "output_hash": manifest["output_hash"],
                "model_sha256": metrics.get("model_sha256"),
                "accuracy": metrics["accuracy"],
                "size_bytes": metrics["size_bytes"],
                "params": metrics.get("params"),
            }
        )
    return rows
