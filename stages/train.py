"""``train``: train the model from its initial weights (the "pretrained" model of the run)."""

from __future__ import annotations

from pydantic import Field

from edgeslim.engine.stage import Stage, StageContext, StageResult, save_same_architecture
from edgeslim.engine.store import TORCH
from edgeslim.train.loop import OptimizerConfig, ScheduleConfig, TrainLoopConfig, evaluate, fit


class TrainConfig(TrainLoopConfig):
    epochs: int = Field(4, ge=1, le=1000)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=3e-3))
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(warmup_epochs=0.5))


class Train(Stage[TrainConfig]):
    name = "train"
    distributed = True
    accepts = (TORCH,)

    def run(self, ctx: StageContext, cfg: TrainConfig) -> StageResult:
        model = ctx.models.load(ctx.input)
        tokenizer = ctx.data.tokens.tokenizer if ctx.data.tokens else None
        result = fit(
            model, ctx.data.train, ctx.data.val, cfg, seed=ctx.seed, label="train", where=ctx.where, tokenizer=tokenizer
        )
        test_acc, test_loss = evaluate(model, ctx.data.test)
        artifact = save_same_architecture(ctx, model)
        return StageResult(
            artifact,
            details={
                "torch_test_accuracy": test_acc,
                "torch_test_loss": test_loss,
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "epochs": result.history,
            },
            notes=[f"best validation accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}"],
        )
