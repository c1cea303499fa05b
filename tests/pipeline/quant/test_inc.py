"""Neural Compressor accuracy-aware INT8 backend on the real digits slice and the trained tiny CNN."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim.export.onnx_io import onnx_logits
from edgeslim.quant.inc import IncResult, autotune_int8, export_int8_onnx, inc_available, layer_sensitivity
from edgeslim.train.loop import evaluate, predict

_REASON = inc_available()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

CALIBRATION = 256
EPS = 1e-6


@pytest.fixture(scope="module")
def model(trained, loader) -> torch.nn.Module:
    return loader.load(trained)


@pytest.fixture(scope="module")
def calibration(data) -> torch.Tensor:
    return data.train.tensors[0][:CALIBRATION]


def with_outlier_channel(model: torch.nn.Module, factor: float = 1000.0) -> torch.nn.Module:
    """The same function, but channel 0 after the first block is ``factor`` times larger.

    Scaling BatchNorm's affine pair up and the next convolution's input weights down keeps the
    float outputs (ReLU commutes with a positive scale), while one shared per-tensor INT8 range
    must now cover the outlier and rounds every other channel away.
    """
    model = copy.deepcopy(model)
    bn, conv = model.get_submodule("features.0.1"), model.get_submodule("features.1.0")
    with torch.no_grad():
        bn.weight[0] *= factor
        bn.bias[0] *= factor
        conv.weight[:, 0] /= factor
    return model


def check_trials(result: IncResult, tolerable_loss: float, max_trials: int) -> None:
    """Invariants of every result: the trial records and the documented choice rule."""
    assert 1 <= len(result.trials) <= max_trials
    for i, trial in enumerate(result.trials):
        assert trial.index == i
        assert trial.config["kind"] == "static"
        assert {"name", "act_sym", "act_algo", "w_granularity", "fp32_layers"} <= trial.config.keys()
        json.dumps(trial.config)  # readable and serialisable for the report
        assert 0.0 <= trial.accuracy <= 1.0
        assert trial.loss_vs_float == pytest.approx(result.float_accuracy - trial.accuracy, abs=EPS)
        assert trial.passed == (trial.loss_vs_float <= tolerable_loss + EPS)
    passing = [t.index for t in result.trials if t.passed]
    if passing:
        # INC walks the list in order and stops at the first configuration within tolerance.
        assert result.budget_met
        assert result.chosen == passing[0] == len(result.trials) - 1
    else:
        assert not result.budget_met
        best = max(t.accuracy for t in result.trials)
        assert result.chosen == min(t.index for t in result.trials if t.accuracy == best)


@pytest.fixture(scope="module")
def tuned(model, data, calibration) -> IncResult:
    return autotune_int8(model, data.example_batch(2), calibration, data.val, tolerable_loss=0.02, max_trials=3)


def test_trials_are_recorded_and_the_rule_picks_the_model(tuned, model, data) -> None:
    check_trials(tuned, tolerable_loss=0.02, max_trials=3)
    assert tuned.float_accuracy == pytest.approx(evaluate(model, data.val)[0], abs=EPS)
    first = tuned.trials[0].config
    assert (first["name"], first["act_sym"], first["w_granularity"], first["fp32_layers"]) == (
        "minmax",
        False,
        "per_channel",
        [],
    )
    # the returned model is the chosen trial's model (calibration is deterministic)
    assert evaluate(tuned.model, data.val)[0] == pytest.approx(tuned.trials[tuned.chosen].accuracy, abs=EPS)


def test_the_float_model_is_left_alone(model, data, calibration) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        autotune_int8(model, data.example_batch(2), calibration, data.val, tolerable_loss=1.0, max_trials=1)
        assert model.training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        model.eval()


def test_fallback_keeps_the_outlier_layer_in_fp32(model, data, calibration) -> None:
    outlier = with_outlier_channel(model)
    assert evaluate(outlier, data.val)[0] == pytest.approx(evaluate(model, data.val)[0], abs=EPS)
    assert layer_sensitivity(outlier, calibration)[0][0] == "features.1.0"

    result = autotune_int8(outlier, data.example_batch(2), calibration, data.val, tolerable_loss=0.02, max_trials=4)
    check_trials(result, tolerable_loss=0.02, max_trials=4)
    names = [t.config["name"] for t in result.trials]
    assert names[:2] == ["minmax", "kl"]
    assert all(t.loss_vs_float > 0.2 for t in result.trials[:2])  # whole-model INT8 collapses
    chosen = result.trials[result.chosen]
    assert result.budget_met and chosen.config["fp32_layers"][0] == "features.1.0"
    assert evaluate(result.model, data.val)[0] == pytest.approx(chosen.accuracy, abs=EPS)


def test_impossible_tolerance_still_returns_the_best_model(model, data, calibration) -> None:
    outlier = with_outlier_channel(model)
    result = autotune_int8(outlier, data.example_batch(2), calibration, data.val, tolerable_loss=1e-9, max_trials=2)
    check_trials(result, tolerable_loss=1e-9, max_trials=2)
    assert not result.budget_met
    assert not any(t.passed for t in result.trials)
    assert result.model is not None
    assert evaluate(result.model, data.val)[0] == pytest.approx(result.trials[result.chosen].accuracy, abs=EPS)


def test_bad_arguments_are_refused(model, data, calibration) -> None:
    with pytest.raises(ValueError, match="tolerable_loss"):
        autotune_int8(model, data.example_batch(2), calibration, data.val, tolerable_loss=-0.1)
    with pytest.raises(ValueError, match="max_trials"):
        autotune_int8(model, data.example_batch(2), calibration, data.val, max_trials=0)


def fused_op_types(path: Path, tmp_path: Path) -> set[str]:
    """Node types after ONNX Runtime's graph optimizations: the kernels it will really run."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}


def test_int8_onnx_runs_in_onnxruntime_and_matches_torch(model, data, calibration, tmp_path: Path) -> None:
    import onnx

    # a generous budget keeps the first (all-INT8) configuration, whatever this seed's accuracy
    result = autotune_int8(model, data.example_batch(2), calibration, data.val, tolerable_loss=1.0, max_trials=1)
    assert result.trials[result.chosen].config["fp32_layers"] == []
    path = export_int8_onnx(result.model, data.example_batch(2), tmp_path / "model.onnx")

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "QLinearConv" in fused_op_types(path, tmp_path)  # ONNX Runtime runs real INT8 convolutions

    x = torch.cat([data.val.tensors[0], data.test.tensors[0]])
    y = torch.cat([data.val.tensors[1], data.test.tensors[1]]).numpy()
    ort_logits = onnx_logits(path, x)
    torch_logits = predict(result.model, x).numpy()
    assert ort_logits.shape == torch_logits.shape  # the batch axis stayed dynamic
    agreement = float((ort_logits.argmax(1) == torch_logits.argmax(1)).mean())
    assert agreement >= 0.99
    ort_acc = float((ort_logits.argmax(1) == y).mean())
    torch_acc = float((torch_logits.argmax(1) == y).mean())
    assert abs(ort_acc - torch_acc) <= 1 / len(y) + EPS  # at most one image of 181 flips
    assert np.abs(ort_logits - torch_logits).max() < 0.5
