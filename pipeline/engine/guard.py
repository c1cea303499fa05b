"""The accuracy guard: a stage's model may lose at most ``max_accuracy_drop`` validation
accuracy against a reference (the baseline or the previous stage).

On a breach the guard's ``on_breach`` decides: ``fail`` (a clear error; earlier artifacts are
untouched because nothing is committed), ``keep_previous`` (the stage passes its input on
unchanged and the report says why) or ``fallback`` (the stage's own next-safer setting, see
``Stage.fallback``, up to ``max_retries``; then ``on_exhausted``). Decisions use the
validation split, never the test split, so the reported test accuracy stays unbiased.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from edgeslim.config.schema import GuardConfig, RunConfig
from edgeslim.engine.stage import Role, Stage, StageContext, StageResult
from edgeslim.engine.store import MANIFEST_FILE, METRICS_FILE, Artifact, stage_label
from edgeslim.errors import StageFailed, UserError

# Runs one way of producing the stage's output into a clean folder and measures it.
Attempt = Callable[[Callable[[StageContext], StageResult]], tuple[StageResult, dict[str, Any]]]


def within_budget(drop: float, max_drop: float) -> bool:
    """An accuracy drop is within budget up to float noise (a drop equal to the budget passes)."""
    return drop <= max_drop + 1e-12


def reference_index(config: RunConfig, before: int | None = None) -> int | None:
    """The index of the run's reference stage (role ``reference``: the baseline), if any before ``before``."""
    entries = config.stages if before is None else config.stages[:before]
    return next((i for i, e in enumerate(entries) if getattr(e.stage_class, "role", None) == Role.REFERENCE), None)


def check_guard_plan(config: RunConfig, index: int, next_accepts: tuple[str, ...] | None, input_kind: str) -> None:
    """Refuse, before anything runs, guards that could not work in this plan."""
    entry = config.stages[index]
    guard, where = entry.guard, f"stages[{index}].{entry.type}.guard"
    if guard is None:
        return
    if guard.reference == "baseline" and reference_index(config, index) is None:
        raise UserError(f"{where}.reference: no baseline stage before this one; add '- baseline' or use previous")
    if index == 0:
        raise UserError(f"{where}: the first stage has no earlier model to compare with or keep")
    keeps = guard.on_breach == "keep_previous" or (
        guard.on_breach == "fallback" and guard.on_exhausted == "keep_previous"
    )
    if keeps and next_accepts is not None and input_kind not in next_accepts:
        raise UserError(
            f"{where}: keep_previous would pass a '{input_kind}' model on, which the next stage does not accept"
        )


def reference_accuracy(
    guard: GuardConfig, config: RunConfig, index: int, measured: dict[int, dict]
) -> tuple[str, float]:
    ref = reference_index(config, index) if guard.reference == "baseline" else index - 1
    assert ref is not None  # check_guard_plan refused the plan otherwise
    name = stage_label(ref, config.stages[ref].type)
    return name, measured[ref]["val_accuracy"]


def keep_previous(ctx: StageContext) -> StageResult:
    """This stage's output becomes a copy of its input (files and facts), with the reason noted."""
    source = ctx.input.directory
    if source is None:
        raise StageFailed(f"{ctx.where}: accuracy guard: there is no earlier stage model to keep")
    for path in source.iterdir():
        if path.name in (MANIFEST_FILE, METRICS_FILE):
            continue
        if path.is_dir():
            shutil.copytree(path, ctx.out_dir / path.name)
        else:
            shutil.copyfile(path, ctx.out_dir / path.name)
    artifact = Artifact(kind=ctx.input.kind, directory=ctx.out_dir, meta=dict(ctx.input.meta))
    artifact.save()
    return StageResult(artifact, details={"kept_previous": source.name})


def _changed(before: dict[str, Any], after: dict[str, Any]) -> str:
    diffs = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in after.items() if before.get(k) != v]
    return ", ".join(diffs) or "same settings"


def run_guarded(
    guard: GuardConfig,
    stage: Stage,
    ctx: StageContext,
    first: tuple[StageResult, dict[str, Any]],
    attempt: Attempt,
    reference: tuple[str, float],
) -> tuple[StageResult, dict[str, Any], dict[str, Any]]:
    """Check the stage's result against the budget and act on a breach; returns the result to keep."""
    ref_name, ref_acc = reference
    record: dict[str, Any] = {
        **guard.model_dump(mode="json"),
        "reference_stage": ref_name,
        "reference_val_accuracy": ref_acc,
        "attempts": [],
    }
    original = stage.config.model_dump(mode="json")

    def within(label: str, metrics: dict[str, Any]) -> bool:
        drop = ref_acc - metrics["val_accuracy"]
        ok = within_budget(drop, guard.max_accuracy_drop)
        record["attempts"].append({"setting": label, "val_accuracy": metrics["val_accuracy"], "drop": drop, "ok": ok})
        return ok

    result, metrics = first
    if within("as configured", metrics):
        record["action"] = "within budget"
        return result, metrics, record
    mode, tries = guard.on_breach, 0
    while mode == "fallback":
        tries += 1
        safer = stage.fallback(tries, result) if tries <= guard.max_retries else None
        if safer is None:
            mode = guard.on_exhausted
            break
        result, metrics = attempt(safer.execute)
        if within(f"fallback {tries}: {_changed(original, safer.config.model_dump(mode='json'))}", metrics):
            record["action"] = f"fallback {tries} met the budget"
            result.notes.append(f"accuracy guard: {record['attempts'][-1]['setting']} (met the budget)")
            return result, metrics, record
    last = record["attempts"][-1]
    summary = (
        f"validation accuracy {last['val_accuracy']:.2%} is {last['drop'] * 100:.2f} pt below {ref_name} "
        f"({ref_acc:.2%}); max_accuracy_drop is {guard.max_accuracy_drop * 100:.2f} pt"
    )
    if mode == "keep_previous":
        result, metrics = attempt(keep_previous)
        record["action"] = f"kept the previous stage's model ({summary})"
        result.notes.append(f"accuracy guard: {summary}; passed the previous stage's model on unchanged")
        return result, metrics, record
    tried = "" if len(record["attempts"]) == 1 else f" after {len(record['attempts']) - 1} fallback setting(s)"
    raise StageFailed(f"{ctx.where}: accuracy guard{tried}: {summary}")
