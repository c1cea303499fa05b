"""A study as results a user can act on: every trial's settings, objectives and state, the Pareto
front, Optuna's parameter importances, and the choice ``--export-best`` makes. ``search.json`` in the
search folder is this summary; the reports (``reports/search_report.py``) render it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict

from edgeslim.engine.store import read_json
from edgeslim.errors import UserError
from edgeslim.study.space import SearchConfig

SEARCH_JSON = "search.json"


class TrialSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    number: int
    state: str  # complete | pruned | failed | interrupted | running | waiting
    params: dict[str, Any]
    values: list[float] | None = None  # in the order of the study's objectives
    accuracy: float | None = None  # validation
    test_accuracy: float | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    reference_accuracy: float | None = None
    feasible: bool | None = None
    run_dir: str | None = None  # relative to the search folder
    error: str | None = None
    duration_s: float | None = None
    curve: list[float] = []
    worker: str | None = None
    default: bool = False  # runs the config's own settings
    initial: bool = False  # one of the space-filling first points (search.initial: lhs)
    pruned_at: str | None = None
    repeat_of: int | None = None  # the earlier trial whose settings (and result) this one repeats


class SearchSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    sampler: str
    objectives: dict[str, str]  # objective -> max | min
    constraints: dict[str, Any]
    trials: list[TrialSummary]
    front: list[int]  # numbers of the non-dominated feasible complete trials
    importances: dict[str, dict[str, float]]  # objective -> parameter -> importance (normalized)
    importance_note: str | None = None
    default_trial: int | None = None  # the trial running the config's own settings
    beat_default: list[int] = []  # complete feasible trials that dominate it

    def trial(self, number: int) -> TrialSummary:
        return next(t for t in self.trials if t.number == number)


def _state(t: FrozenTrial) -> str:
    if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
        return "interrupted"
    return {TrialState.FAIL: "failed"}.get(t.state, t.state.name.lower())


def trial_summary(t: FrozenTrial) -> TrialSummary:
    a = t.user_attrs
    constraints = a.get("constraints")
    return TrialSummary(
        number=t.number,
        state=_state(t),
        params=dict(t.params),
        values=list(t.values) if t.values is not None else None,
        accuracy=a.get("accuracy"),
        test_accuracy=a.get("test_accuracy"),
        latency_ms=a.get("latency_ms"),
        size_bytes=a.get("size_bytes"),
        reference_accuracy=a.get("reference_accuracy"),
        feasible=None if constraints is None else all(v <= 0 for v in dict(constraints).values()),
        run_dir=a.get("run_dir"),
        error=a.get("error"),
        duration_s=a.get("duration_s"),
        curve=list(a.get("curve", [])),
        worker=a.get("worker"),
        default=bool(a.get("default")),
        initial=bool(a.get("initial")),
        pruned_at=a.get("pruned_at"),
        repeat_of=a.get("repeat_of"),
    )


def dominates(a: list[float], b: list[float], signs: list[float]) -> bool:
    """``a`` at least as good as ``b`` everywhere and better somewhere (signs: +1 maximize, -1 minimize)."""
    better = [sa * s >= sb * s for sa, sb, s in zip(a, b, signs, strict=True)]
    strictly = [sa * s > sb * s for sa, sb, s in zip(a, b, signs, strict=True)]
    return all(better) and any(strictly)


def pareto_front(trials: list[TrialSummary], objectives: dict[str, str]) -> list[int]:
    signs = [1.0 if d == "max" else -1.0 for d in objectives.values()]
    pool = [
        t
        for t in trials
        if t.state == "complete" and t.values is not None and t.feasible is not False and t.repeat_of is None
    ]
    return [
        t.number
        for t in pool
        if not any(dominates(o.values, t.values, signs) for o in pool if o.number != t.number)  # type: ignore[arg-type]
    ]


def _importances(study: optuna.Study, cfg: SearchConfig) -> tuple[dict[str, dict[str, float]], str | None]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(cfg.space) < 2:
        return {}, "one parameter: nothing to rank"
    if len(complete) < 3:
        return {}, f"{len(complete)} complete trial(s): Optuna's importances need at least 3"
    out: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, objective in enumerate(cfg.objectives):
                values = optuna.importance.get_param_importances(
                    study,
                    target=lambda t, i=i: t.values[i],
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                )
                out[objective] = {k: round(float(v), 4) for k, v in values.items()}
    except (RuntimeError, ValueError) as exc:  # e.g. a parameter whose value never changed
        return out, f"importances not computed: {' '.join(str(exc).split())[:200]}"
    return out, None


def summarize(study: optuna.Study, cfg: SearchConfig, search_dir: Path) -> SearchSummary:
    trials = [trial_summary(t) for t in study.get_trials(deepcopy=False)]
    importances, note = _importances(study, cfg)
    default = next((t for t in trials if t.default), None)
    signs = [1.0 if d == "max" else -1.0 for d in cfg.objectives.values()]
    beat = []
    if default is not None and default.state == "complete" and default.values is not None:
        beat = [
            t.number
            for t in trials
            if t.state == "complete"
            and t.repeat_of is None
            and t.values is not None
            and t.feasible is not False
            and dominates(t.values, default.values, signs)
        ]
    summary = SearchSummary(
        name=study.study_name,
        default_trial=None if default is None else default.number,
        beat_default=beat,
        sampler=cfg.sampler_name,
        objectives=dict(cfg.objectives),
        constraints=cfg.constraints.model_dump(exclude_none=True),
        trials=trials,
        front=pareto_front(trials, dict(cfg.objectives)),
        importances=importances,
        importance_note=note,
    )
    return summary


def read_summary(search_dir: Path) -> SearchSummary:
    path = search_dir / SEARCH_JSON
    try:
        return SearchSummary.model_validate(read_json(path))
    except (OSError, json.JSONDecodeError):
        raise UserError(f"no readable {SEARCH_JSON} in {search_dir} (is it a search folder?)") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a search summary: {' '.join(str(exc).split())[:200]}") from None


def choose_best(summary: SearchSummary, max_drop_pt: float | None) -> TrialSummary | None:
    """The front's fastest trial (smallest without a latency objective; most accurate with accuracy
    alone) among those within ``max_drop_pt`` points of their baseline stage's validation accuracy
    (of the best trial's accuracy in runs without a baseline)."""
    pool = [t for t in summary.trials if t.number in summary.front and t.accuracy is not None]
    if max_drop_pt is not None:
        best_acc = max((t.accuracy for t in pool), default=0.0)

        def within(t: TrialSummary) -> bool:
            reference = t.reference_accuracy if t.reference_accuracy is not None else best_acc
            return (reference - t.accuracy) * 100 <= max_drop_pt + 1e-9  # type: ignore[operator]

        pool = [t for t in pool if within(t)]
    if not pool:
        return None
    if "latency_ms" in summary.objectives:
        return min(pool, key=lambda t: (t.latency_ms if t.latency_ms is not None else float("inf"), -t.accuracy))
    if "size_bytes" in summary.objectives:
        return min(pool, key=lambda t: (t.size_bytes or 0, -t.accuracy))
    return max(pool, key=lambda t: t.accuracy)  # type: ignore[arg-type, return-value]
