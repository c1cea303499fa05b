"""Accuracy-aware static INT8 quantization with Intel Neural Compressor (INC 3.x, PT2E path).

INC 3.10 has no ONNX adaptor and no ``quantization.fit`` any more; what works here is its torch
API: ``export`` (torch.export with a dynamic batch) -> ``autotune`` over a list of
``StaticQuantConfig`` (prepare -> calibrate -> convert, X86 quantizer from torchao) -> a
PT2E QDQ graph module. That module is the same kind of model our QAT flow produces
(``convert_pt2e``), so it exports with ``torch.onnx.export(dynamo=True)`` into a QDQ model that
ONNX Runtime fuses into QLinearConv kernels.

The tuner walks a short, ordered list and stops at the first configuration whose accuracy loss
is within ``tolerable_loss``:

1. ``minmax``: uint8 asymmetric per-tensor activations, int8 symmetric per-channel weights
   (the X86/ONNX Runtime u8s8 scheme);
2. ``kl``: the same with histogram-calibrated activation ranges (clips rare outliers);
3. fallbacks: the better of 1-2 with the most quantization-sensitive Conv/Linear layers kept
   in FP32, one more layer per trial (INC 3.x supports this for PT2E static through
   ``set_local(layer, StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))``; 3.x has no
   op-wise fallback strategy of its own, so the ranking is ours, see :func:`layer_sensitivity`).
   A fallback costs more speed than its own layer: the convolution feeding an FP32 layer has
   no quantized output, so ONNX Runtime cannot fuse it into QLinearConv either.

Symmetric activations and per-tensor weights are deliberately not tried: with symmetric
activations (uint8 with zero point 128, or int8) ONNX Runtime on x86 cannot fuse Conv+ReLU into
QLinearConv and runs the convolutions in float between Q/DQ pairs (EdgeCNN: 2.6 ms vs 1.5 ms
FP32 vs 0.45 ms asymmetric INT8), and per-tensor weights run on the same kernels and were no
more accurate than per-channel ones on our models.

Rule for the chosen trial: the first passing trial in that order (INC stops there); when none
passes, the most accurate trial (the earliest on ties) with ``budget_met=False``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = [
    "IncResult",
    "Trial",
    "autotune_int8",
    "export_int8_onnx",
    "inc_available",
    "layer_sensitivity",
    "onnx_int8_ops",
]

log = logging.getLogger(__name__)

_EPS = 1e-9  # accuracies are multiples of 1/len(val): this only absorbs float rounding
_CALIBRATION_BATCH = 1024  # INC's "minmax" is a moving average over batches: use few, large ones
_FP32 = {"w_dtype": "fp32", "act_dtype": "fp32"}
_INT8_ONNX_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger")


@dataclass
class Trial:
    index: int
    config: dict[str, Any]  # readable settings of this trial
    accuracy: float  # validation accuracy of this trial's quantized model
    loss_vs_float: float  # float accuracy - accuracy (absolute, fraction)
    passed: bool  # loss within tolerable_loss


@dataclass
class IncResult:
    model: nn.Module  # the chosen quantized model (PT2E QDQ graph module), exportable to ONNX INT8
    trials: list[Trial]
    chosen: int  # index into trials
    budget_met: bool  # False when no trial met the tolerance (the best one is still returned)
    float_accuracy: float


def _quiet_import() -> ModuleType:
    """Import INC's torch API without its import-time noise.

    INC logs accelerator detection at import (its logger level comes from ``$LOGLEVEL`` when the
    logger is first created), torchao warns about CUDA-only kernels ("Failed to load
    ..._C_mxfp8.so") and torch's pytree warns about an enum registration.
    """
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    saved = os.environ.get("LOGLEVEL")
    os.environ["LOGLEVEL"] = "ERROR"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import neural_compressor.torch.export  # noqa: F401
            import neural_compressor.torch.quantization as inc
            import torchao.quantization.pt2e.constant_fold  # noqa: F401
    finally:
        if saved is None:
            os.environ.pop("LOGLEVEL", None)
        else:
            os.environ["LOGLEVEL"] = saved
    logging.getLogger("neural_compressor").setLevel(logging.ERROR)  # per-trial tables and config dumps
    return inc


@functools.cache
def inc_available() -> str | None:
    """None if Neural Compressor's PT2E quantization imports here, else a one-line reason."""
    try:
        _quiet_import()
    except ImportError as exc:
        return f"neural-compressor is not importable: {exc}".replace("\n", " ")
    except Exception as exc:  # a broken install fails in many ways; the caller only needs the reason
        return f"neural-compressor failed to import: {type(exc).__name__}: {exc}".replace("\n", " ")
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """INC's deep copies and exports raise FutureWarnings from torch's pytree; none is actionable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fp32_fallback(base: Any, layers: Sequence[str]) -> Any:
    """A copy of ``base`` that leaves ``layers`` (module names) unquantized."""
    from neural_compressor.torch.quantization import StaticQuantConfig

    config = StaticQuantConfig(**{k: getattr(base, k) for k in ("act_algo", "act_sym", "w_granularity")})
    for layer in layers:
        config.set_local(layer, StaticQuantConfig(**_FP32))
    return config


def _describe(name: str, config: Any, fp32_layers: Sequence[str]) -> dict[str, Any]:
    keys = ("act_dtype", "act_sym", "act_granularity", "act_algo", "w_dtype", "w_sym", "w_granularity", "w_algo")
    return {"kind": "static", "name": name, **{k: getattr(config, k) for k in keys}, "fp32_layers": list(fp32_layers)}


@torch.no_grad()
def _input_quant_error(x: torch.Tensor) -> float:
    """Mean over channels of the relative error uint8 per-tensor min/max quantization puts on ``x``.

    Averaging per channel (dim 1) exposes outlier channels: one huge channel stretches the shared
    range and rounds every other channel to a few levels, though it dominates the plain MSE.
    """
    x = x.detach().float()
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zero = round(-lo / scale)
    xq = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 1 else [0]
    err = ((x - xq) ** 2).sum(dims) / ((x**2).sum(dims) + 1e-12)
    return float(err.mean())


@torch.no_grad()
def layer_sensitivity(model: nn.Module, inputs: torch.Tensor) -> list[tuple[str, float]]:
    """Conv/Linear layers ranked by how much per-tensor INT8 hurts their input, most sensitive first.

    A cheap proxy (one forward pass) for the layers worth keeping in FP32; weights are left out
    because per-channel int8 weights are rarely the problem.
    """
    scores: dict[str, float] = {}
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    hooks = [
        m.register_forward_hook(lambda _m, args, _out, name=name: scores.__setitem__(name, _input_quant_error(args[0])))
        for name, m in model.named_modules()
        if isinstance(m, kinds)
    ]
    was_training = model.training
    try:
        model.eval()
        model(inputs[:_CALIBRATION_BATCH])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)


def _fold_weights(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Store weights as int8 constants, like ``convert_pt2e(fold_quantize=True)`` in our QAT flow.

    INC converts with ``fold_quantize=False``: the ONNX file would then carry FP32 weights plus
    QuantizeLinear/Clip nodes (bigger, and ONNX Runtime rounds them slightly differently).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.constant_fold import constant_fold

    quant_ops = {
        torch.ops.quantized_decomposed.quantize_per_tensor.default,
        torch.ops.quantized_decomposed.quantize_per_tensor.tensor,
        torch.ops.quantized_decomposed.quantize_per_channel.default,
    }
    constant_fold(model, lambda n: n.op == "call_function" and n.target in quant_ops)
    move_exported_model_to_eval(model)
    return model


class _Tuner:
    """Runs INC's autotune round by round and records every trial through the evaluation hook."""

    def __init__(
        self,
        exported: torch.fx.GraphModule,
        example: torch.Tensor,
        calibration: torch.Tensor,
        val: TensorDataset,
        float_accuracy: float,
        tolerable_loss: float,
    ):
        self.inc = _quiet_import()
        self.exported = exported
        self.example = example
        self.calibration = calibration
        self.val = val
        self.float_accuracy = float_accuracy
        self.tolerable_loss = tolerable_loss
        self.trials: list[Trial] = []
        self.models: dict[int, torch.fx.GraphModule] = {}  # trial index -> the model INC returned
        self.candidates: list[tuple[Any, dict[str, Any]]] = []  # every configuration offered, in order
        self._round: list[tuple[Any, dict[str, Any]]] = []

    def calibrate(self, model: nn.Module) -> None:
        with torch.no_grad():
            for i in range(0, len(self.calibration), _CALIBRATION_BATCH):
                model(self.calibration[i : i + _CALIBRATION_BATCH])

    def _config_of(self, model: nn.Module) -> tuple[Any, dict[str, Any]]:
        used = next(iter(getattr(model, "qconfig", {}).values()), None)
        for config, described in self._round:
            if config is used:
                return config, described
        for config, described in self._round:
            if config == used:
                return config, described
        raise RuntimeError(f"neural-compressor evaluated a model with an unknown configuration: {used!r}")

    def evaluate(self, model: nn.Module) -> float:
        """INC's ``eval_fn``: the float baseline comes from the cache, every quantized model is a trial."""
        from edgeslim.train.loop import evaluate

        if not getattr(model, "is_quantized", False):
            return self.float_accuracy
        _, described = self._config_of(model)
        accuracy = evaluate(model, self.val)[0]
        loss = self.float_accuracy - accuracy
        trial = Trial(len(self.trials), described, accuracy, loss, loss <= self.tolerable_loss + _EPS)
        self.trials.append(trial)
        log.info(
            "INC trial %d %s: accuracy %.4f (%+.2f pt vs float) %s",
            trial.index,
            described["name"],
            accuracy,
            -100 * loss,
            "passed" if trial.passed else "failed",
        )
        return accuracy

    def run_round(self, candidates: list[tuple[Any, dict[str, Any]]]) -> None:
        """One ``autotune`` over ``candidates`` (in order; INC stops at the first that passes)."""
        if not candidates:
            return
        self.candidates += candidates
        self._round = candidates
        first = len(self.trials)
        # INC's tolerance is relative to the float result: (float - q) / float <= tol.
        relative = (self.tolerable_loss + _EPS) / max(self.float_accuracy, _EPS)
        tuning = self.inc.TuningConfig(
            config_set=[c for c, _ in candidates], tolerable_loss=relative, max_trials=len(candidates)
        )
        with _quiet():
            model = self.inc.autotune(
                self.exported, tuning, eval_fn=self.evaluate, run_fn=self.calibrate, example_inputs=(self.example,)
            )
        if model is not None:
            _, described = self._config_of(model)
            index = next(t.index for t in self.trials[first:] if t.config is described)
            self.models[index] = model

    def model_for(self, index: int) -> torch.fx.GraphModule:
        """The quantized model of a trial: the one INC returned, else quantized again (deterministic)."""
        if index in self.models:
            return self.models[index]
        from neural_compressor.torch.quantization.autotune import _deepcopy_warp

        config = next(c for c, d in self.candidates if d is self.trials[index].config)
        with _quiet():
            return self.inc.quantize(
                _deepcopy_warp(self.exported), config, run_fn=self.calibrate, example_inputs=(self.example,)
            )


def _choose(trials: list[Trial]) -> tuple[int, bool]:
    """The first passing trial, else the most accurate one (the earliest on ties)."""
    for t in trials:
        if t.passed:
            return t.index, True
    best = max(trials, key=lambda t: (t.accuracy, -t.index))
    return best.index, False


def autotune_int8(
    model: nn.Module,
    example: torch.Tensor,
    calibration: torch.Tensor,
    val: TensorDataset,
    tolerable_loss: float = 0.01,
    max_trials: int = 8,
    seed: int = 0,
) -> IncResult:
    """Accuracy-aware static INT8 tuning driven by Neural Compressor's ``autotune``, evaluated on ``val``.

    ``tolerable_loss`` is absolute (0.01 = one accuracy point below the float model); INC's own
    tolerance is relative, so it is converted. ``calibration`` are input images (training data,
    never the evaluation split), fed in batches of up to 1024: INC's ``minmax`` observer is a
    moving average across batches. ``max_trials`` bounds all rounds together; ``seed`` fixes
    torch's RNG while tuning (calibration itself is deterministic). The float ``model`` is not
    modified. Never ends empty-handed: without a passing trial the most accurate one is returned
    with ``budget_met=False``.
    """
    from edgeslim.train.loop import evaluate

    if tolerable_loss < 0:
        raise ValueError(f"tolerable_loss must be >= 0, got {tolerable_loss}")
    if max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials}")
    reason = inc_available()
    if reason is not None:
        raise RuntimeError(reason)
    inc = _quiet_import()
    from neural_compressor.torch.export import export

    if example.shape[0] < 2:  # a batch of 1 would be specialised away by torch.export
        example = torch.cat([example, example])
    float_model = copy.deepcopy(model).eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        float_accuracy = evaluate(float_model, val)[0]
        ranking = [name for name, _ in layer_sensitivity(float_model, calibration)]
        with _quiet():
            exported = export(float_model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        tuner = _Tuner(exported, example, calibration, val, float_accuracy, tolerable_loss)

        schemes = [("minmax", inc.StaticQuantConfig()), ("kl", inc.StaticQuantConfig(act_algo="kl"))]
        first_round = [(c, _describe(n, c, [])) for n, c in schemes[:max_trials]]
        tuner.run_round(first_round)

        if not any(t.passed for t in tuner.trials):
            base = tuner.trials[_choose(tuner.trials)[0]].config
            base_config = next(c for c, d in first_round if d is base)
            room = min(max_trials - len(tuner.trials), len(ranking) - 1)  # all layers in FP32 = the float model
            fallbacks = []
            for k in range(1, room + 1):
                config = _fp32_fallback(base_config, ranking[:k])
                fallbacks.append((config, _describe(f"{base['name']}+fp32x{k}", config, ranking[:k])))
            tuner.run_round(fallbacks)

        chosen, met = _choose(tuner.trials)
        quantized = _fold_weights(tuner.model_for(chosen))
    return IncResult(quantized, tuner.trials, chosen, met, float_accuracy)


def onnx_int8_ops(path: Path) -> dict[str, int]:
    """Counts of the quantization node types (QDQ or QOperator) in an ONNX file."""
    from edgeslim.export.onnx_io import load_onnx

    counts: dict[str, int] = {}
    for node in load_onnx(path, external_data=False).graph.node:
        if node.op_type in _INT8_ONNX_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def export_int8_onnx(result_model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The INT8 model as a QDQ ONNX file (dynamic batch) that ONNX Runtime fuses into INT8 kernels.

    Same route as our QAT models: the converted PT2E graph through the dynamo exporter.
    """
    from edgeslim.export.onnx_io import export_onnx

    export_onnx(result_model, example, path)
    if not any(op in onnx_int8_ops(path) for op in ("DequantizeLinear", "QLinearConv", "QGemm", "QLinearMatMul")):
        raise RuntimeError(f"{path.name}: the export has no quantized nodes; expected a converted INT8 model")
    return path
