"""ONNX Runtime post-training quantization: recipes, per-node sensitivity, mixed precision, auto choice.

The ``quantize`` stage only orchestrates; everything that touches ``onnxruntime.quantization``
lives here so it can be tested on small models directly.

Traps in onnxruntime 1.32 this module works around:

* ``quantize_dynamic`` silently rewrites ``Gemm`` (what the dynamo exporter emits for
  ``nn.Linear``) into ``MatMul`` + ``Add`` and renames the node ``<gemm>_MatMul``, so
  ``nodes_to_exclude=[<gemm>]`` no longer matches; ``MatMulNBitsQuantizer`` skips ``Gemm``
  altogether. :func:`gemm_to_matmul` does the rewrite first and keeps the node's name.
* ``MatMulNBitsQuantizer(nodes_to_include=...)`` does not restrict anything (it is OR-ed with
  the op types), so "quantize only this node" is done by excluding every other node.
* ONNX Runtime's own ``WeightBiasQuantization`` graph transformer (on by default) quantizes the
  float weights of an excluded Conv/Gemm whose input comes from a DequantizeLinear, per-tensor,
  when the session starts: ``nodes_to_exclude`` is undone exactly where it matters.
  :func:`shield_float_nodes` rewrites such inputs so excluded nodes really stay FP32.
* INT4 ``MatMulNBits`` computes in fp32 unless ``accuracy_level=4`` (int8): only then was it
  faster than the float model on this x86 CPU (about 3x faster than level 0).
* Calibration ranges do not depend on which nodes are quantized, so one calibration (cached
  with ``calibration_cache_path``) serves every sensitivity and mixed-precision trial.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from edgeslim.export.onnx_io import check_onnx_file, load_onnx, onnx_logits
from edgeslim.quant import methods
from edgeslim.quant.graph import (
    LARGE_MATMUL_WEIGHT,
    WEIGHTED_OPS,
    QuantNode,
    gemm_to_matmul,
    is_linear_heavy,
    weighted_nodes,
)
from edgeslim.quant.methods import Recipe, recipe_from

Method = Literal["static", "dynamic", "int4"]
ACCURACY_EPS = 1e-9  # drops are fractions of a finite split: compare with a little slack


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence onnxruntime.quantization's INFO/WARNING logging and its stray ``print`` calls."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def preprocess(source: Path, out: Path) -> Path:
    """ONNX Runtime's ``quant_pre_process``: shape inference and basic graph fusions (node names kept)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with quiet_ort():
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    return out


def ort_optimize(source: Path, out: Path, level: Literal["basic", "extended"] = "extended") -> Path:
    """Save ONNX Runtime's optimized graph (QDQ pairs fused into QLinearConv/QGemm at ``extended``).

    ``extended`` is the highest level whose saved graph is portable: ``all`` adds NCHWc layout
    transforms that ONNX Runtime itself warns are specific to the CPU they ran on.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    check_onnx_file(source)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])  # checked just above
    return out


class QuantBench:
    """A float model prepared for quantization, with the data to judge its quantized versions.

    Calibration uses training samples; every decision (sensitivity, mixed precision, ``auto``)
    uses the validation split. The test split is never seen here. All files live in
    ``work_dir``, which the caller removes.
    """

    def __init__(
        self,
        float_model: Path,
        work_dir: Path,
        calibration: np.ndarray,
        val: tuple[torch.Tensor, torch.Tensor],
        *,
        preprocess_first: bool = True,
        eval_batch_size: int = 256,
    ):
        self.float_model = float_model
        self.work_dir = work_dir
        self.calibration = calibration
        self.val_x, self.val_y = val
        self.eval_batch_size = eval_batch_size
        self.prepared = preprocess(float_model, work_dir / "prepared.onnx") if preprocess_first else float_model
        self.input_name = load_onnx(float_model, external_data=False).graph.input[0].name
        self._trials = 0

    # ------------------------------------------------------------ graphs and nodes

    @cached_property
    def matmul_model(self) -> Path:
        """The prepared model with Gemm rewritten as MatMul (what dynamic and int4 quantize)."""
        model = load_onnx(self.prepared)
        gemm_to_matmul(model)
        path = self.work_dir / "prepared_matmul.onnx"
        onnx.save(model, str(path))
        return path

    def model_for(self, method: str) -> Path:
        return self.prepared if method == "static" else self.matmul_model

    def nodes(self, method: str) -> list[QuantNode]:
        """The nodes ``method`` quantizes (their names are what ``exclude_nodes`` takes)."""
        model = load_onnx(self.model_for(method))
        return weighted_nodes(model, WEIGHTED_OPS[method])

    def trial_path(self, tag: str) -> Path:
        self._trials += 1
        return self.work_dir / f"trial{self._trials:03d}-{tag}.onnx"

    # ------------------------------------------------------------ quantization

    def quantize(
        self, recipe: Recipe, out: Path, exclude: Sequence[str] = (), only: Sequence[str] | None = None
    ) -> Path:
        """Quantize with ``recipe``; ``exclude`` stays FP32; ``only`` (if given) is all that is quantized."""
        with quiet_ort():
            return methods.quantize(self, recipe, out, exclude, only)

    # ------------------------------------------------------------ judging

    def _logits(self, path: Path, x: torch.Tensor) -> np.ndarray:
        return onnx_logits(path, x, batch_size=self.eval_batch_size)

    @cached_property
    def float_val_logits(self) -> np.ndarray:
        return self._logits(self.float_model, self.val_x)

    @cached_property
    def float_val_accuracy(self) -> float:
        return float((self.float_val_logits.argmax(1) == self.val_y.numpy()).mean())

    @cached_property
    def float_calibration_logits(self) -> np.ndarray:
        return self._logits(self.float_model, torch.from_numpy(self.calibration))

    def evaluate(self, path: Path) -> tuple[float, float]:
        """(validation accuracy, validation logits MSE vs the float model)."""
        logits = self._logits(path, self.val_x)
        accuracy = float((logits.argmax(1) == self.val_y.numpy()).mean())
        return accuracy, float(np.mean((logits - self.float_val_logits) ** 2))

    def output_error(self, path: Path) -> float:
        """Logits MSE vs the float model on the calibration samples: the cheap sensitivity proxy."""
        logits = self._logits(path, torch.from_numpy(self.calibration))
        return float(np.mean((logits - self.float_calibration_logits) ** 2))


# ---------------------------------------------------------------- sensitivity and mixed precision


def rank_sensitivity(
    bench: QuantBench, recipe: Recipe, proxy: Literal["accuracy", "output_error"], exclude: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Quantize each node alone and rank by the damage done, most sensitive first.

    ``accuracy``: validation accuracy drop vs the float model (ties broken by validation logits
    MSE); ``output_error``: logits MSE on the calibration samples (no labels, fewer samples).
    """
    rows = []
    for node in bench.nodes(recipe.method):
        if node.name in exclude:
            continue
        path = bench.quantize(recipe, bench.trial_path("node"), only=[node.name])
        row: dict[str, Any] = {"node": node.name, "op_type": node.op_type}
        if proxy == "accuracy":
            accuracy, mse = bench.evaluate(path)
            row.update(accuracy_drop=bench.float_val_accuracy - accuracy, output_mse=mse)
        else:
            row.update(output_mse=bench.output_error(path))
        path.unlink()
        rows.append(row)
    key = (lambda r: (r["accuracy_drop"], r["output_mse"])) if proxy == "accuracy" else (lambda r: r["output_mse"])
    rows.sort(key=key, reverse=True)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        row["fp32"] = False
    return rows


@dataclass
class Trial:
    """One quantized model tried by a search: which nodes stayed FP32 and how it scored."""

    fp32_nodes: list[str]
    val_accuracy: float
    accuracy_drop: float
    path: Path = field(repr=False)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "path"}


@dataclass
class MixedPrecisionResult:
    best: Trial
    budget_met: bool
    trials: list[Trial]


def search_mixed_precision(
    bench: QuantBench,
    recipe: Recipe,
    ranked: Sequence[str],
    *,
    max_accuracy_drop: float,
    max_fp32_nodes: int,
    exclude: Sequence[str] = (),
) -> MixedPrecisionResult:
    """Quantize everything, then keep the next most sensitive node FP32 until the budget is met.

    ``exclude`` (the user's own FP32 nodes) always stays FP32 and does not count against
    ``max_fp32_nodes``. When the budget cannot be met the most accurate trial is kept.
    """
    order = [n for n in ranked if n not in exclude]
    trials: list[Trial] = []
    for k in range(min(max_fp32_nodes, len(order)) + 1):
        fp32 = order[:k]
        path = bench.quantize(recipe, bench.trial_path(f"fp32x{k}"), exclude=[*exclude, *fp32])
        accuracy, _ = bench.evaluate(path)
        trials.append(Trial(fp32, accuracy, bench.float_val_accuracy - accuracy, path))
        if trials[-1].accuracy_drop <= max_accuracy_drop + ACCURACY_EPS:
            return MixedPrecisionResult(trials[-1], True, trials)
    best = max(trials, key=lambda t: (t.val_accuracy, -len(t.fp32_nodes)))
    return MixedPrecisionResult(best, False, trials)


# ---------------------------------------------------------------- auto


@dataclass
class Candidate:
    """One configuration ``auto`` measured."""

    name: str
    recipe: Recipe
    val_accuracy: float
    accuracy_drop: float
    p50_ms: float
    size_bytes: int
    path: Path
    fp32_nodes: list[str] = field(default_factory=list)
    chosen: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.recipe.settings(),
            "label": self.recipe.label(),
            "fp32_nodes": list(self.fp32_nodes),
            "val_accuracy": self.val_accuracy,
            "accuracy_drop": self.accuracy_drop,
            "p50_ms": self.p50_ms,
            "size_bytes": self.size_bytes,
            "chosen": self.chosen,
        }


def auto_recipes(bench: QuantBench, base: Mapping[str, Any]) -> list[tuple[str, Recipe]]:
    """The candidates that apply to this model (``base``, the stage's flat settings, supplies format,
    percentile, reduce_range and the INT4 settings)."""
    static = recipe_from({**base, "per_channel": True, "activation_type": "uint8", "weight_type": "int8"}, "static")

    def variant(**changes: Any) -> Recipe:
        return static.model_copy(update=changes)

    out = [
        ("static-u8s8-minmax", variant(calibration="minmax")),
        ("static-per-tensor", variant(calibration="minmax", per_channel=False)),
        ("static-entropy", variant(calibration="entropy")),
        ("static-percentile", variant(calibration="percentile")),
        ("static-s8s8", variant(calibration="minmax", activation_type="int8", format="qdq")),
    ]
    if is_linear_heavy(bench.nodes("static")):
        out.append(("dynamic", recipe_from({**base, "per_channel": True, "weight_type": "int8"}, "dynamic")))
    if any(n.weight_elements >= LARGE_MATMUL_WEIGHT for n in bench.nodes("int4")):
        out.append(("int4", recipe_from(base, "int4")))
    return out


def measure_candidate(
    bench: QuantBench,
    name: str,
    recipe: Recipe,
    latency_p50: Callable[[Path], float],
    exclude: Sequence[str] = (),
    path: Path | None = None,
) -> Candidate:
    """Quantize (unless ``path`` is given), then validation accuracy, median latency and size."""
    if path is None:
        path = bench.quantize(recipe, bench.trial_path(name), exclude=exclude)
    accuracy, _ = bench.evaluate(path)
    return Candidate(
        name=name,
        recipe=recipe,
        val_accuracy=accuracy,
        accuracy_drop=bench.float_val_accuracy - accuracy,
        p50_ms=latency_p50(path),
        size_bytes=path.stat().st_size,
        path=path,
        fp32_nodes=list(exclude),
    )


@dataclass
class AutoResult:
    best: Candidate
    budget_met: bool
    candidates: list[Candidate]
    ranking: list[dict[str, Any]] | None = None  # when FP32 nodes were searched for the most accurate


def auto_select(
    bench: QuantBench,
    base: Mapping[str, Any],
    latency_p50: Callable[[Path], float],
    *,
    max_accuracy_drop: float,
    exclude: Sequence[str] = (),
    fp32_search: tuple[Literal["accuracy", "output_error"], int] | None = None,
) -> AutoResult:
    """Measure every candidate that applies and keep the fastest within the budget.

    When none is within it and ``fp32_search`` = (proxy, max FP32 nodes) is given, the most
    accurate candidate gets a mixed-precision search and the result joins the table as
    ``<name>+fp32``; the choice is then made again over all of them.
    """
    candidates = [
        measure_candidate(bench, name, recipe, latency_p50, exclude=exclude)
        for name, recipe in auto_recipes(bench, base)
    ]
    best, within = choose_candidate(candidates, max_accuracy_drop)
    if within or fp32_search is None:
        return AutoResult(best, within, candidates)
    proxy, max_fp32_nodes = fp32_search
    ranking = rank_sensitivity(bench, best.recipe, proxy, exclude=exclude)
    search = search_mixed_precision(
        bench,
        best.recipe,
        [r["node"] for r in ranking],
        max_accuracy_drop=max_accuracy_drop,
        max_fp32_nodes=max_fp32_nodes,
        exclude=exclude,
    )
    fp32 = [*exclude, *search.best.fp32_nodes]
    mixed = measure_candidate(bench, f"{best.name}+fp32", best.recipe, latency_p50, exclude=fp32, path=search.best.path)
    candidates.append(mixed)
    best, within = choose_candidate(candidates, max_accuracy_drop)
    return AutoResult(best, within, candidates, ranking)


def choose_candidate(candidates: Sequence[Candidate], max_accuracy_drop: float) -> tuple[Candidate, bool]:
    """The fastest candidate within the budget; else the most accurate (then fastest). Marks it chosen."""
    within = [c for c in candidates if c.accuracy_drop <= max_accuracy_drop + ACCURACY_EPS]
    fastest_within = min(within, key=lambda c: c.p50_ms) if within else None
    best = fastest_within or max(candidates, key=lambda c: (c.val_accuracy, -c.p50_ms))
    for c in candidates:
        c.chosen = c is best
    return best, bool(within)


QUANTIZED_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul")


def quantized_weight_count(model: onnx.ModelProto) -> int:
    """How many weighted nodes compute with quantized weights (QDQ, QOperator, dynamic or INT4)."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    count = 0
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS or node.op_type == "MatMulNBits":
            count += 1
        elif node.op_type in WEIGHTED_OPS["static"] and len(node.input) > 1:
            count += producers.get(node.input[1]) == "DequantizeLinear"
    return count
