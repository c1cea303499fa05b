"""The accuracy guard: fail, keep_previous, fallback (with retries) and the run-level budget."""

from __future__ import annotations

import pytest

from edgeslim.api import parse_config
from edgeslim.api import run as run_pipeline
from edgeslim.engine.store import hash_tree
from edgeslim.errors import StageFailed, UserError
from tests.conftest import TRAIN, small_config

HARSH_PRUNE = {"importance": "l1", "pruning_ratio": 0.9, "bn_recalibration_batches": 0}


def config(prune_guard=None, run_guard=None, extra_stages=(), **prune_settings):
    prune = {**HARSH_PRUNE, **prune_settings, **({"guard": prune_guard} if prune_guard else {})}
    stages = [{"train": TRAIN}, "baseline", {"prune": prune}, *extra_stages]
    return parse_config(small_config(stages, **({"guard": run_guard} if run_guard else {})))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One folder for every test: train + baseline run once, later runs reuse them."""
    folder = tmp_path_factory.mktemp("guard")
    run_pipeline(config(), folder).report.to_json()
    return folder


def test_fail_stops_with_one_line_and_keeps_earlier_artifacts(out):
    before = {d: hash_tree(out / "t" / d) for d in ("00-train", "01-baseline")}
    with pytest.raises(
        StageFailed,
        match=r"^stages\[2\]\.prune: accuracy guard: validation accuracy .* pt below "
        r"01-baseline .*max_accuracy_drop is 0\.00 pt$",
    ):
        run_pipeline(config({"max_accuracy_drop": 0.0}), out).report.to_json()
    assert {d: hash_tree(out / "t" / d) for d in before} == before
    assert not (out / "t" / "02-prune").exists() or "guard" not in str(hash_tree(out / "t" / "02-prune"))


def test_keep_previous_passes_the_input_on_and_says_why(out):
    report = run_pipeline(config({"max_accuracy_drop": 0.0, "on_breach": "keep_previous"}), out).report.to_json()
    base, prune = report["stages"][1], report["stages"][2]
    assert prune["metrics"]["params"] == base["metrics"]["params"]
    assert prune["metrics"]["val_accuracy"] == base["metrics"]["val_accuracy"]
    assert prune["guard"]["action"].startswith("kept the previous stage's model")
    assert prune["guard"]["attempts"][0]["ok"] is False
    assert any("passed the previous stage's model on unchanged" in n for n in prune["notes"])


def test_fallback_prunes_less_until_the_budget_is_met(out):
    guard = {"max_accuracy_drop": 0.1, "on_breach": "fallback", "max_retries": 12}
    report = run_pipeline(config(guard, bn_recalibration_batches=10), out).report.to_json()
    guard = report["stages"][2]["guard"]
    attempts = guard["attempts"]
    assert [a["ok"] for a in attempts] == [False] * (len(attempts) - 1) + [True]
    assert len(attempts) >= 2 and guard["action"].startswith("fallback")
    ratios = [0.9] + [float(a["setting"].split("-> ")[-1]) for a in attempts[1:]]
    assert ratios == sorted(ratios, reverse=True)  # each retry removes fewer channels
    assert attempts[-1]["drop"] <= 0.1
    table = (out / "t" / "report.md").read_text().split("## Accuracy guard")[1]
    rows = [line for line in table.splitlines() if line.startswith("| 02-prune")]
    assert len(rows) == len(attempts)  # one row per attempt, the last one with the action
    assert "| as configured |" in rows[0] and "| no |" in rows[0]
    assert "| yes |" in rows[-1] and guard["action"] in rows[-1]


def test_fallback_exhausted_fails_or_keeps_previous(out):
    harsh = {"max_accuracy_drop": 0.0, "on_breach": "fallback", "max_retries": 2}
    with pytest.raises(StageFailed, match=r"accuracy guard after 2 fallback setting\(s\)"):
        run_pipeline(config(harsh), out).report.to_json()
    report = run_pipeline(config({**harsh, "on_exhausted": "keep_previous"}), out).report.to_json()
    guard = report["stages"][2]["guard"]
    assert len(guard["attempts"]) == 3 and guard["action"].startswith("kept the previous")


def test_run_guard_fail_and_keep_best(out):
    with pytest.raises(StageFailed, match=r"^run guard: the final model \(02-prune\) is .* every stage's artifact"):
        run_pipeline(config(run_guard={"max_accuracy_drop": 0.0}), out).report.to_json()
    assert (out / "t" / "02-prune" / "manifest.json").is_file()  # kept, only not called the deliverable
    report = run_pipeline(config(run_guard={"max_accuracy_drop": 0.0, "on_breach": "keep_best"}), out).report.to_json()
    assert report["guard"]["ok"] is False and report["guard"]["deliverable"] == "01-baseline"
    assert "over budget; deliverable: 01-baseline." in (out / "t" / "report.md").read_text()


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [{"train": TRAIN}, {"prune": {"guard": {"max_accuracy_drop": 0.01}}}],
            r"stages\[1\]\.prune\.guard\.reference: no baseline stage before this one",
        ),
        (
            ["baseline", {"export": {"guard": {"max_accuracy_drop": 0.01, "on_breach": "keep_previous"}}}, "benchmark"],
            r"stages\[1\]\.export\.guard: keep_previous would pass a 'torch' model on",
        ),
        (
            ["baseline", {"prune": {"guard": {"max_drop": 0.01}}}],
            r"stages\[1\]\.prune\.guard\.max_drop: unknown key; allowed keys: max_accuracy_drop,",
        ),
        (
            ["baseline", {"prune": {"guard": {"max_accuracy_drop": 0.01, "on_breach": "retry"}}}],
            r"^stages\[1\]\.prune\.guard\.on_breach: Input should be 'fail', 'keep_previous' or 'fallback'",
        ),
    ],
)
def test_impossible_guards_are_refused_before_anything_runs(tmp_path, stages, message):
    with pytest.raises(UserError, match=message):
        run_pipeline(parse_config(small_config(stages)), tmp_path).report.to_json()
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
