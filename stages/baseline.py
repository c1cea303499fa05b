"""``baseline``: evaluate the starting model; it is the reference for ratios and distillation.

With an ONNX model as input (``model.name: path.onnx``) it records that model as is.
"""

from __future__ import annotations

import shutil

import torch

from edgeslim.config.schema import StrictModel
from edgeslim.engine.stage import (
    ONNX_MODEL_FILE,
    Role,
    Stage,
    StageContext,
    StageResult,
    onnx_artifact,
    save_same_architecture,
)
from edgeslim.engine.store import ONNX, TORCH
from edgeslim.train.loop import evaluate, predict


class BaselineConfig(StrictModel):
    """The baseline has no settings: it measures the model as it is."""


class Baseline(Stage[BaselineConfig]):
    name = "baseline"
    accepts = (TORCH, ONNX)
    role = Role.REFERENCE  # ratios, guards and comparisons are taken against this stage

    def run(self, ctx: StageContext, cfg: BaselineConfig) -> StageResult:
        if ctx.input.kind == ONNX:
            shutil.copyfile(ctx.input.file("model"), ctx.out_dir / ONNX_MODEL_FILE)
            artifact = onnx_artifact(ctx, ONNX, {"source": ctx.input.meta.get("source", "onnx")})
            return StageResult(
                artifact,
                notes=[
                    f"ONNX model {ctx.input.file('model').name} taken as is: PyTorch stages (train, prune, "
                    "finetune, export to ONNX) do not apply"
                ],
            )
        model = ctx.models.load(ctx.input)
        test_acc, test_loss = evaluate(model, ctx.data.test)
        val_acc, _ = evaluate(model, ctx.data.val)
        y = ctx.data.test.labels
        pred = predict(model, ctx.data.test).argmax(1)
        per_class = {int(c): float((pred[y == c] == c).float().mean()) for c in torch.unique(y)}
        artifact = save_same_architecture(ctx, model)
        params, macs = artifact.meta["params"], artifact.meta["macs"]
        worst = min(per_class, key=per_class.get)
        return StageResult(
            artifact,
            details={
                "torch_test_accuracy": test_acc,
                "torch_test_loss": test_loss,
                "torch_val_accuracy": val_acc,
                "per_class_accuracy": per_class,
                "params": params,
                "macs": macs,
            },
            notes=[
                f"PyTorch test accuracy {test_acc:.4f}, weakest class {worst} ({per_class[worst]:.3f}); "
                f"{params:,} params, {macs / 1e6:.1f} M MACs"
            ],
        )
