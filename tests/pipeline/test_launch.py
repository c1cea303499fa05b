"""``edgeslim run --nproc 2``: the run under torchrun's launcher, as a user starts it (real processes,
gloo on CPU): one writer, resumes across world sizes, one-line errors when a rank dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeslim.engine.records import read_report
from edgeslim.engine.store import MANIFEST_FILE, read_json
from tests.conftest import small_config, write_config

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = {"batch_size": 32, "optimizer": {"lr": 0.003}, "patience": None}


def _config(tmp_path: Path, epochs: int, **finetune: object) -> Path:
    stages = [
        {"baseline": {}},
        {"prune": {"importance": "l1", "pruning_ratio": 0.5}},
        {"finetune": {**FINETUNE, "epochs": epochs, "distill": {"teacher": "baseline"}, **finetune}},
        {"export": {}},
    ]
    return write_config(tmp_path / "run.yaml", small_config(stages, name="dp"))


def _start(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "edgeslim", "run", str(config), "--out", str(config.parent / "out"), *args]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(command, cwd=config.parent, env=env, text=True, **pipes)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _statuses(run_dir: Path) -> dict[str, str]:
    return {s.label: s.status for s in read_report(run_dir).stages}


def test_two_processes_one_writer_and_resume(tmp_path: Path):
    """QAT with distillation and importance-scaled learning rates, the heaviest training stage, in 2 ranks."""
    config = _config(tmp_path, epochs=2, qat=True, importance_lr={"criterion": "fisher"})
    code, err = _finish(_start(config, "--nproc", "2"))
    assert code == 0, err
    assert "Traceback" not in err
    run_dir = tmp_path / "out" / "dp"
    assert _statuses(run_dir) == dict.fromkeys(["00-baseline", "01-prune", "02-finetune", "03-export"], "ran")
    # only rank 0 wrote: every file is a stage's (listed in its manifest) or the run's own
    listed = {MANIFEST_FILE}
    run_files = {"report.json", "report.md", "report.html", "measurements.json", ".lock"}
    for stage in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        listed_here = set(read_json(stage / MANIFEST_FILE)["files"]) | listed
        assert {str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()} <= listed_here, stage
    assert {p.name for p in run_dir.iterdir() if p.is_file()} <= run_files
    finetune = read_json(run_dir / "02-finetune" / "metrics.json")
    assert finetune["details"]["epochs"][-1]["batch_size"] == 32  # the global batch, as configured
    # a rerun with the same world size resumes: everything is reused
    code, err = _finish(_start(config, "--nproc", "2"))
    assert code == 0, err
    assert set(_statuses(run_dir).values()) == {"cached"}


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the launcher's child process that torchrun gave ``RANK=rank``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), None)
        if ppid == str(parent) and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_killed_rank_stops_the_run_and_a_rerun_with_another_world_size_resumes(tmp_path: Path):
    config = _config(tmp_path, epochs=60)
    run_dir = tmp_path / "out" / "dp"
    proc = _start(config, "--nproc", "2")
    partial = run_dir / ".02-finetune.partial"
    deadline = time.monotonic() + 300
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert partial.exists(), "the finetune stage never started"
    time.sleep(2.0)  # well inside its 60 epochs
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    code, err = _finish(proc)
    assert code != 0
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("edgeslim: ")]
    assert any("rank 1 was killed by SIGKILL" in line for line in errors), err
    assert len(errors) <= 2, err  # rank 0's line and the launcher's (rank 1 had no chance to say anything)
    assert not partial.exists(), "the unfinished stage must be discarded"
    assert not (run_dir / "02-finetune").exists()
    # rerun with one process: the stages that do not train are reused, finetune redone
    code, err = _finish(_start(config, "--nproc", "1"))
    assert code == 0, err
    assert _statuses(run_dir) == {
        "00-baseline": "cached",
        "01-prune": "cached",
        "02-finetune": "ran",
        "03-export": "ran",
    }


def test_a_user_error_is_one_line_on_every_rank(tmp_path: Path):
    """A global batch that does not split over the ranks: exit 2, the same one line from each rank and
    the launcher's, no traceback."""
    stages = [{"train": {"epochs": 1, "batch_size": 33}}]
    config = write_config(tmp_path / "run.yaml", small_config(stages, name="odd"))
    code, err = _finish(_start(config, "--nproc", "2"))
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("edgeslim: error: ")]
    assert sum("does not split evenly over 2 processes" in line for line in errors) == 2, err
    assert "rank" in errors[-1] and "exited with code 2" in errors[-1], err
    code, err = _finish(_start(config, "--nproc", "0"))
    assert code == 2 and err.strip().splitlines()[-1].startswith("edgeslim: error: run: --nproc must be"), err
