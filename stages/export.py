"""``export``: PyTorch -> ONNX (dynamo exporter, dynamic batch axis), checked against PyTorch.

A QAT model is converted to its INT8 form first. The parity check runs the whole test split
through both and records the max/mean absolute difference and top-1 agreement; the stage
fails when agreement is below ``min_top1_agreement``.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from pipeline import qat
from pipeline.artifacts import ONNX, ONNX_INT8, TORCH, TORCH_QAT, Artifact
from pipeline.config import StrictModel
from pipeline.errors import StageFailed
from pipeline.onnx_io import export_onnx, onnx_logits
from pipeline.stage import Stage, StageContext, StageResult, register
from pipeline.training import predict

MODEL_FILE = "model.onnx"


class ExportConfig(StrictModel):
    opset: int = Field(20, ge=17, le=23)
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="fail below this ONNX-vs-PyTorch agreement")


@register
class Export(Stage):
    name = "export"
    Config = ExportConfig
    accepts = (TORCH, TORCH_QAT)

    def output_kind(self, input_kind: str) -> str:
        return ONNX_INT8 if input_kind == TORCH_QAT else ONNX

    def run(self, ctx: StageContext) -> StageResult:
        cfg: ExportConfig = self.config  # type: ignore[assignment]
        model = ctx.models.load(ctx.input)
        quantized = ctx.input.kind == TORCH_QAT
        if quantized:
            model = qat.convert(model)
        path = export_onnx(model, ctx.example(), ctx.out_dir / MODEL_FILE, opset=cfg.opset)
        x, _ = ctx.data.test.tensors
        reference = predict(model, x).numpy()
        exported = onnx_logits(path, x, batch_size=ctx.config.measure.eval_batch_size)
        diff = np.abs(reference - exported)
        agreement = float((reference.argmax(1) == exported.argmax(1)).mean())
        parity = {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "top1_agreement": agreement,
            "samples": len(x),
        }
        if agreement < cfg.min_top1_agreement:
            raise StageFailed(
                f"{ctx.where}: ONNX and PyTorch agree on top-1 for only {agreement:.2%} of {len(x)} test samples "
                f"(min_top1_agreement: {cfg.min_top1_agreement}); max abs diff {parity['max_abs_diff']:.3g}"
            )
        artifact = Artifact(
            kind=self.output_kind(ctx.input.kind),
            directory=ctx.out_dir,
            meta={
                "files": {"model": MODEL_FILE},
                "params": ctx.input.meta.get("params"),
                "macs": ctx.input.meta.get("macs"),
                "quantized": quantized,
                "opset": cfg.opset,
            },
        )
        artifact.save()
        return StageResult(
            artifact,
            details={"parity": parity, "opset": cfg.opset},
            notes=[
                f"{'INT8 (from QAT)' if quantized else 'FP32'} ONNX, opset {cfg.opset}: top-1 agreement with "
                f"PyTorch {agreement:.2%}, max abs diff {parity['max_abs_diff']:.2e}"
            ],
        )
