"""Searches on a digits slice: seeded and reproducible, resumable, sharing stage prefixes between
trials, recording failed and pruned trials, several workers on one SQLite study, and a best trial
exported as a config that reproduces it."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgeslim.api import open_run
from edgeslim.study.front import read_summary
from edgeslim.study.search import MAX_REPEATS, export_best, search
from tests.conftest import small_config, write_config

STAGES = [
    {"train": {"epochs": 6, "batch_size": 32, "optimizer": {"lr": 0.01}}},
    "baseline",
    {"prune": {"pruning_ratio": 0.5, "importance": "l1"}},
    {"finetune": {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.003}}},
]
SPACE = {
    "stages.prune.pruning_ratio": {"low": 0.2, "high": 0.7},
    "stages.prune.importance": ["l1", "taylor"],
    "stages.finetune.optimizer.lr": {"low": 1e-3, "high": 1e-2, "log": True},
}


def search_config(name: str = "s", **search) -> dict:
    cfg = small_config(copy.deepcopy(STAGES), name=name)
    cfg["data"]["max_samples"] = 300
    cfg["search"] = {"space": SPACE, "objectives": {"accuracy": "max", "latency_ms": "min"}, "seed": 3, **search}
    return cfg


def stage_status(search_dir: Path, number: int) -> dict[str, str]:
    report = open_run(search_dir / "trials" / f"trial-{number:04d}").report
    return {s.name: s.status for s in report.stages}


def test_a_seeded_search_is_reproducible_resumes_and_shares_its_stage_prefix(tmp_path):
    a = search(search_config(trials=3, sampler="random"), tmp_path / "a")
    b = search(search_config(trials=3, sampler="random"), tmp_path / "b")
    params = [t.params for t in a.trials]
    assert params == [t.params for t in b.trials]
    assert [t.accuracy for t in a.trials] == [t.accuracy for t in b.trials]  # training is seeded too
    assert a.trials[0].default and a.trials[0].params == {  # the config's own settings come first
        "stages.prune.pruning_ratio": 0.5,
        "stages.prune.importance": "l1",
        "stages.finetune.optimizer.lr": 0.003,
    }
    assert all(t.state == "complete" for t in a.trials)
    assert len({tuple(sorted(p.items())) for p in params}) == 3
    # train and baseline ran once: later trials reuse them (the runner's own cache check decides)
    search_dir = a.search_dir
    assert stage_status(search_dir, 0) == {"train": "ran", "baseline": "ran", "prune": "ran", "finetune": "ran"}
    assert stage_status(search_dir, 2) == {"train": "cached", "baseline": "cached", "prune": "ran", "finetune": "ran"}
    # a rerun with a larger budget adds trials; the finished ones are not redone
    c = search(search_config(trials=4, sampler="random"), tmp_path / "a")
    assert [t.number for t in c.trials] == [0, 1, 2, 3] and c.trials[:3] == a.trials[:3]
    assert c.trials[3].params not in params  # the resumed sampler does not replay the first process's draws
    summary = read_summary(search_dir)
    assert summary.front and set(summary.front) <= {0, 1, 2, 3}
    md = (search_dir / "search.md").read_text()
    assert "★" in md and "trials/trial-0003" in md and "(default)" in md
    html = (search_dir / "search.html").read_text()
    assert "<svg" in html and 'href="trials/trial-0000/report.html"' in html
    # the exported best config is a plain run config reproducing its trial
    path, best = export_best(search_dir, max_drop_pt=100)
    exported = yaml.safe_load(path.read_text())
    assert "search" not in exported and exported["name"] == "s-best"
    from edgeslim.api import run

    again = run(exported, tmp_path / "again")
    assert again.final.metrics.val_accuracy == pytest.approx(best.accuracy)


def test_failed_and_pruned_trials_are_recorded_and_the_search_goes_on(tmp_path):
    cfg = search_config(trials=4, sampler="tpe", objectives={"accuracy": "max"})
    # a finetune guard that fails the run for trials losing > 0 pt: some trials fail inside the pipeline
    cfg["stages"][3]["finetune"]["guard"] = {"max_accuracy_drop": 0.0, "on_breach": "fail"}
    cfg["search"]["pruner"] = {"startup_trials": 1, "warmup_epochs": 0}
    cfg["search"]["space"] = {**SPACE, "stages.prune.pruning_ratio": {"low": 0.6, "high": 0.9}}
    result = search(cfg, tmp_path)
    states = [t.state for t in result.trials]
    assert len(states) == 4 and "failed" in states, states
    failed = next(t for t in result.trials if t.state == "failed")
    assert "guard" in failed.error and "\n" not in failed.error
    assert all(t.state in ("complete", "failed", "pruned") for t in result.trials)


def test_a_trial_repeating_settings_already_run_is_free_and_an_exhausted_space_ends_the_search(tmp_path):
    cfg = search_config(trials=4, sampler="random")
    cfg["search"]["space"] = {"stages.prune.importance": ["l1", "taylor"]}  # two points: the budget cannot be met
    result = search(cfg, tmp_path)
    ran = [t for t in result.trials if t.repeat_of is None]
    assert sorted(t.params["stages.prune.importance"] for t in ran) == ["l1", "taylor"]
    assert all(t.repeat_of is not None for t in result.trials[-MAX_REPEATS:])  # then it stopped
    for t in result.trials:
        if t.repeat_of is not None:
            first = result.summary.trial(t.repeat_of)
            assert t.params == first.params and t.values == first.values and t.accuracy == first.accuracy
            assert t.duration_s == 0.0 and t.state == "complete" and first.repeat_of is None
            assert not (result.search_dir / "trials" / f"trial-{t.number:04d}").exists()  # nothing ran
    assert result.summary.front and set(result.summary.front) <= {t.number for t in ran}
    assert "(repeat of 0)" in (result.search_dir / "search.md").read_text()


def _worker(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.Popen(
        [sys.executable, "-m", "edgeslim.cli", "search", str(config), "--out", str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def shares_one_study(tmp_path: Path, storage: list[str]) -> None:
    """Two worker processes on one study: the budget is met exactly, no trial lost or duplicated."""
    cfg = search_config(trials=5, sampler="random")
    config = write_config(tmp_path / "search.yaml", cfg)
    workers = [_worker(config, tmp_path / "out", "--worker", *storage) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err[-2000:]
    summary = read_summary(tmp_path / "out" / "s")
    assert [t.number for t in summary.trials] == [0, 1, 2, 3, 4]
    assert all(t.state == "complete" for t in summary.trials), [t.state for t in summary.trials]
    assert len({t.worker for t in summary.trials}) == 2  # both did work
    assert len({tuple(sorted(t.params.items())) for t in summary.trials}) == 5  # each its own settings


def test_two_workers_share_one_sqlite_study(tmp_path):
    shares_one_study(tmp_path, [])


def test_a_killed_search_resumes_without_redoing_finished_trials(tmp_path):
    cfg = search_config(trials=3, sampler="random")
    config = write_config(tmp_path / "search.yaml", cfg)
    out = tmp_path / "out"
    proc = _worker(config, out)
    search_dir = out / "s"
    deadline = time.monotonic() + 300
    # kill it while trial 1 runs (trial 0 finished: its run folder has a report with every stage)
    while time.monotonic() < deadline:
        if (search_dir / "trials" / "trial-0001.log").is_file():
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = _worker(config, out)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "interrupted" in err and "queued again" in err
    summary = read_summary(search_dir)
    states = {t.number: t.state for t in summary.trials}
    assert states[1] == "interrupted" and sum(s == "complete" for s in states.values()) == 3, states
    retry = next(t for t in summary.trials if t.number > 1 and t.params == summary.trial(1).params)
    assert retry.state == "complete"
    assert stage_status(search_dir, 0)["finetune"] == "ran"  # trial 0 was not redone
    assert summary.trial(0).duration_s is not None
