"""Checking a whole run before any work starts: every stage is asked what it makes from what it
gets (``Stage.plan``), so a stage that cannot take its input, a missing file or an impossible
guard fails in a second instead of after an hour of training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeslim.config.schema import RunConfig, canonical_hash
from edgeslim.data.batches import describe
from edgeslim.data.datasets import DataSplits
from edgeslim.engine.guard import check_guard_plan, reference_index
from edgeslim.engine.stage import PlanRequest, Stage, StagePlan
from edgeslim.engine.store import ONNX, TORCH, Artifact, sha256_file
from edgeslim.errors import UserError, first_line
from edgeslim.export.onnx_io import check_onnx_file, onnx_logits


@dataclass(frozen=True)
class PlannedStage:
    index: int
    stage: Stage
    plan: StagePlan

    @property
    def where(self) -> str:
        return f"stages[{self.index}].{self.stage.name}"


def build_plan(config: RunConfig) -> list[PlannedStage]:
    """Instantiate the stages and check that each one accepts what the previous one produces."""
    stages: list[Stage] = [e.stage_class(e.settings) for e in config.stages]
    kind, made_by = (ONNX, "model.name") if config.model.onnx_file else (TORCH, "the model in the config")
    planned = []
    for i, (entry, stage) in enumerate(zip(config.stages, stages, strict=True)):
        where = f"stages[{i}].{entry.type}"
        if config.model.onnx_file is not None and ONNX not in stage.accepts:
            onnx_ready = ", ".join(name for name, cls in config.stage_types.items() if ONNX in cls.accepts)
            raise UserError(
                f"{where}: needs a PyTorch model, but model.name is an ONNX file; with an ONNX model the "
                f"stages are: {onnx_ready}"
            )
        if kind not in stage.accepts:
            raise UserError(
                f"{where}: cannot take a '{kind}' model (made by {made_by}); it accepts: {', '.join(stage.accepts)}"
            )
        plan = stage.plan(PlanRequest(kind, config, i))
        for path in plan.input_files:
            if not path.is_file():
                raise UserError(f"{where}: file not found: {path}")
        next_accepts = stages[i + 1].accepts if i + 1 < len(stages) else None
        check_guard_plan(config, i, next_accepts, kind)
        planned.append(PlannedStage(i, stage, plan))
        kind, made_by = plan.output_kind, where
    if config.guard is not None and reference_index(config) is None:
        raise UserError("guard: the run-level accuracy guard compares with the baseline; add a '- baseline' stage")
    return planned


def onnx_source(path: Path, data: DataSplits) -> tuple[Artifact, str]:
    """An ONNX file as the run's starting artifact, checked to be safe and to accept the data."""
    check_onnx_file(path, "model.name")
    try:
        outputs = onnx_logits(path, data.example_batch(2))
    except Exception as exc:
        raise UserError(
            f"model.name: {path.name} does not run on the data's inputs {describe(data.example_batch(2))}: "
            f"{first_line(exc)}"
        ) from None
    if outputs.ndim != 2 or outputs.shape[1] < data.num_classes:
        raise UserError(
            f"model.name: {path.name} outputs shape {outputs.shape}; expected (batch, {data.num_classes}) class scores"
        )
    artifact = Artifact(kind=ONNX, directory=path.parent, meta={"files": {"model": path.name}, "source": "onnx"})
    return artifact, canonical_hash({"onnx_sha256": sha256_file(path)})
