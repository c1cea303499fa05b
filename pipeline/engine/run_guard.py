"""The run-level accuracy guard: the final model against the reference stage (validation split).

Apart from ``guard`` (which decides a stage's output) because it only reads the run's records:
it can name another stage as the deliverable, never change a model.
"""

from __future__ import annotations

from typing import Any

from edgeslim.config.schema import RunGuard
from edgeslim.engine.guard import within_budget
from edgeslim.engine.records import RunGuardOutcome, RunReport
from edgeslim.engine.stage import Role
from edgeslim.errors import UserError


def run_guard_check(guard: RunGuard, report: RunReport) -> RunGuardOutcome:
    """The run-level budget: the final measured model vs the reference stage (validation accuracy)."""
    stages = report.measured()
    base = next((s for s in stages if s.role == Role.REFERENCE), None)
    if base is None or base.metrics is None:
        raise UserError("guard: the run-level accuracy guard needs a baseline stage")
    ref = base.metrics.val_accuracy
    final = stages[-1]
    assert final.metrics is not None

    def drop(stage: Any) -> float:
        return ref - stage.metrics.val_accuracy

    outcome = RunGuardOutcome(
        **guard.model_dump(mode="json"),
        baseline_val_accuracy=ref,
        final_stage=final.dir,
        final_val_accuracy=final.metrics.val_accuracy,
        drop=drop(final),
        ok=within_budget(drop(final), guard.max_accuracy_drop),
        deliverable=final.dir,
    )
    if not outcome.ok and guard.on_breach == "keep_best":
        after = stages[stages.index(base) :]
        fine = [s for s in after if within_budget(drop(s), guard.max_accuracy_drop)]
        outcome.deliverable = fine[-1].dir
    return outcome
