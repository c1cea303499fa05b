"""``quantize``: ONNX Runtime static INT8 post-training quantization of a float ONNX model.

Calibrates activation ranges on training images (never the test split). A model that is
already INT8 (from QAT) is refused: quantizing twice only loses accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from pydantic import Field

from pipeline.artifacts import ONNX, ONNX_INT8
from pipeline.config import StrictModel
from pipeline.errors import UserError
from pipeline.onnx_io import check_onnx_file
from pipeline.stage import ONNX_MODEL_FILE, Stage, StageContext, StageResult, onnx_artifact, register


class QuantizeConfig(StrictModel):
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(256, ge=1, le=100_000)
    preprocess: bool = Field(True, description="ONNX Runtime's quant_pre_process (shape inference, fusions)")


class _Reader:
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, name: str, samples: np.ndarray, batch_size: int = 32):
        self._batches = iter([{name: samples[i : i + batch_size]} for i in range(0, len(samples), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - not used by static calibration
        raise NotImplementedError


@register
class Quantize(Stage):
    name = "quantize"
    Config = QuantizeConfig
    accepts = (ONNX, ONNX_INT8)

    def output_kind(self, input_kind: str) -> str:
        return ONNX_INT8

    def check_plan(self, input_kind: str, where: str) -> None:
        if input_kind == ONNX_INT8:
            raise UserError(
                f"{where}: the model is already INT8 (quantization-aware training); "
                "remove this stage or set finetune.qat: false"
            )

    def run(self, ctx: StageContext) -> StageResult:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        cfg: QuantizeConfig = self.config  # type: ignore[assignment]
        source = ctx.input.file("model")
        check_onnx_file(source)
        model_in: Path = source
        if cfg.preprocess:
            model_in = ctx.out_dir / "preprocessed.onnx"
            quant_pre_process(str(source), str(model_in), skip_symbolic_shape=True)
        x_train = ctx.data.train.tensors[0]
        pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(ctx.seed))
        samples = x_train[pick[: cfg.calibration_samples]].numpy()
        out = ctx.out_dir / ONNX_MODEL_FILE
        input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name
        quantize_static(
            str(model_in),
            str(out),
            _Reader(input_name, samples),
            quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8 if cfg.weight_type == "int8" else QuantType.QUInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[cfg.calibration],
        )
        if model_in != source:
            model_in.unlink()
        artifact = onnx_artifact(ctx, ONNX_INT8, {"quantized": True})
        scheme = (
            f"{cfg.format.upper()}, {'per-channel' if cfg.per_channel else 'per-tensor'} "
            f"{cfg.weight_type} weights, {cfg.activation_type} activations, {cfg.calibration} calibration "
            f"on {len(samples)} training images"
        )
        return StageResult(
            artifact,
            details={"scheme": cfg.model_dump(), "calibration_samples": len(samples)},
            notes=[f"static INT8: {scheme}"],
        )
