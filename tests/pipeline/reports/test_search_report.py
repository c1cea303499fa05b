"""The search report: every trial with its settings, objectives and state; the front drawn with links."""

from __future__ import annotations

from edgeslim.reports.search_report import to_html, to_markdown, write_search_reports
from edgeslim.study.front import SearchSummary, TrialSummary, choose_best, pareto_front, read_summary

OBJ = {"accuracy": "max", "latency_ms": "min"}


def trial(n: int, acc: float | None, ms: float | None, state: str = "complete", **kw) -> TrialSummary:
    values = None if acc is None else [acc, ms]
    return TrialSummary(
        number=n,
        state=state,
        params={"stages.prune.pruning_ratio": 0.1 * n},
        values=values,
        accuracy=acc,
        test_accuracy=acc,
        latency_ms=ms,
        size_bytes=1000 * (n + 1),
        reference_accuracy=0.95,
        feasible=True,
        run_dir=None if acc is None else f"trials/trial-{n:04d}",
        **kw,
    )


def summary() -> SearchSummary:
    trials = [
        trial(0, 0.94, 1.0, default=True),
        trial(1, 0.95, 0.8),  # dominates 0
        trial(2, 0.90, 0.5),
        trial(3, 0.80, 0.9),  # dominated by 1 and 2
        trial(4, None, None, state="failed", error="stages[3].finetune: guard"),
        trial(5, None, None, state="pruned", pruned_at="epoch 2: validation 0.5 < median 0.8"),
    ]
    return SearchSummary(
        name="s",
        sampler="nsga2",
        objectives=OBJ,
        constraints={},
        trials=trials,
        front=pareto_front(trials, OBJ),
        importances={"accuracy": {"stages.prune.pruning_ratio": 1.0}},
        default_trial=0,
        beat_default=[1],
    )


def test_front_best_and_reports(tmp_path):
    s = summary()
    assert s.front == [1, 2]
    assert choose_best(s, max_drop_pt=1.0).number == 1  # trial 2 is faster but 5 pt below its baseline
    assert choose_best(s, max_drop_pt=None).number == 2
    assert choose_best(s, max_drop_pt=0.0).number == 1  # 0.95 vs its 0.95 baseline
    md = to_markdown(s)
    assert "| 1 | complete ★ |" in md and "| 0 | complete (default) |" in md
    assert "trials dominating it: 1" in md and "stages[3].finetune: guard" in md and "pruned at epoch 2" in md
    page = to_html(s)
    assert page.count("<svg") == 1 and 'href="trials/trial-0001/report.html"' in page
    write_search_reports(tmp_path, s)
    assert read_summary(tmp_path) == s
