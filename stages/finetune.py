"""``finetune``: recover accuracy after pruning, optionally with distillation and QAT.

Defaults: AdamW, cosine schedule, early stopping with the best state restored. ``distill``
adds Hinton distillation from an earlier stage's model (the unpruned ``baseline`` by default).
``qat: true`` inserts PT2E fake quantization (torchao) first, so the result converts to a real
INT8 model at export.
"""

from __future__ import annotations

from pydantic import Field

from pipeline import qat
from pipeline.artifacts import TORCH, TORCH_QAT
from pipeline.config import StrictModel
from pipeline.errors import UserError
from pipeline.stage import Stage, StageContext, StageResult, register
from pipeline.torch_model import count_params_and_macs, save_torch_artifact
from pipeline.training import (
    OptimizerConfig,
    TrainLoopConfig,
    cross_entropy,
    distillation_loss,
    evaluate,
    fit,
)


class DistillConfig(StrictModel):
    teacher: str = Field("baseline", description="earlier stage whose model teaches (name or index)")
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")


class FinetuneConfig(TrainLoopConfig):
    epochs: int = Field(4, ge=1, le=1000)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=1e-3))
    distill: DistillConfig | None = None
    qat: bool = Field(False, description="quantization-aware training (PT2E, torchao)")


@register
class Finetune(Stage):
    name = "finetune"
    Config = FinetuneConfig
    accepts = (TORCH,)

    def output_kind(self, input_kind: str) -> str:
        return TORCH_QAT if self.config.qat else TORCH  # type: ignore[attr-defined]

    def run(self, ctx: StageContext) -> StageResult:
        cfg: FinetuneConfig = self.config  # type: ignore[assignment]
        model = ctx.models.load(ctx.input)
        start_acc, _ = evaluate(model, ctx.data.val)
        params, macs = count_params_and_macs(model, ctx.example())
        loss_fn = cross_entropy
        notes = []
        if cfg.distill is not None:
            teacher_artifact = ctx.artifact_of(cfg.distill.teacher)
            if teacher_artifact.kind != TORCH:
                raise UserError(
                    f"{ctx.where}.distill.teacher: stage '{cfg.distill.teacher}' is not a float "
                    f"PyTorch model ({teacher_artifact.kind})"
                )
            teacher = ctx.models.load(teacher_artifact)
            teacher.eval()
            loss_fn = distillation_loss(teacher, cfg.distill.temperature, cfg.distill.alpha)
            notes.append(
                f"distilled from stage '{cfg.distill.teacher}' (T={cfg.distill.temperature}, alpha={cfg.distill.alpha})"
            )
        if cfg.qat:
            model = qat.prepare_qat(model, ctx.example(4))
            notes.append("quantization-aware training (PT2E, X86 quantizer: u8 activations, per-channel s8 weights)")
        result = fit(
            model,
            ctx.data.train,
            ctx.data.val,
            cfg,
            loss_fn=loss_fn,
            seed=ctx.seed,
            label="finetune" + (" (QAT)" if cfg.qat else ""),
            where=ctx.where,
        )
        if cfg.qat:
            qat.freeze_observers(model)
        test_acc, _ = evaluate(model, ctx.data.test)
        artifact = save_torch_artifact(
            ctx.out_dir,
            model,
            kind=TORCH_QAT if cfg.qat else TORCH,
            pruning_history=ctx.models.history_of(ctx.input),
            params=params,
            macs=macs,
        )
        notes.append(
            f"val accuracy {start_acc:.4f} → {result.best_val_accuracy:.4f} (best epoch "
            f"{result.best_epoch}{', stopped early' if result.stopped_early else ''})"
        )
        return StageResult(
            artifact,
            details={
                "val_accuracy_before": start_acc,
                "best_val_accuracy": result.best_val_accuracy,
                "torch_test_accuracy": test_acc,
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "epochs": result.history,
            },
            notes=notes,
        )
