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
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from edgeslim.data.batches import Inputs, Split, as_split, feeds, first
from edgeslim.devices import edgeslim_bench
from edgeslim.export.onnx_io import check_onnx_file, load_onnx, onnx_logits
from edgeslim.quant import methods
from edgeslim.quant.graph import (
    LARGE_MATMUL_WEIGHT,
    WEIGHTED_OPS,
    QuantNode,
    float_regions,
    gemm_to_matmul,
    is_linear_heavy,
    mean_to_global_pool,
    weighted_nodes,
)
from edgeslim.quant.methods import Recipe, recipe_from

Method = Literal["static", "dynamic", "int4", "optimum"]
ACCURACY_EPS = 1e-9  # drops are fractions of a finite split: compare with a little slack
PER_CHANNEL_OPSET = 13  # DequantizeLinear's ``axis`` (per-channel weights) exists from opset 13


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto | None:
    """``onnx.version_converter`` to ``opset``; None when the converter cannot do it."""
    from onnx import version_converter

    try:
        upgraded = version_converter.convert_version(model, opset)
        onnx.checker.check_model(upgraded)
    except Exception:  # the converter raises many types for ops it has no adapter for
        return None
    return upgraded


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence onnxruntime.quantization's INFO/WARNING logging, its stray ``print`` calls and numpy's
    overflow warnings from its histogram calibrators (a transformer's -3.4e38 attention-mask values):
    a calibration that really fails raises, and every candidate is judged on validation accuracy."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
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
        calibration: Inputs | np.ndarray,
        val: Split | tuple[Inputs, Any],
        *,
        preprocess_first: bool = True,
        eval_batch_size: int = 256,
    ):
        self.float_model = float_model
        self.work_dir = work_dir
        self.calibration = calibration
        self.val = as_split(val)
        self.eval_batch_size = eval_batch_size
        graph = load_onnx(float_model, external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in initializers]
        self._trials = 0
        self.notes: list[str] = []  # what preparing the graph changed, for the stage's report
        self.per_channel_allowed = True
        source = self._fusable_source(float_model)
        self.prepared = preprocess(source, work_dir / "prepared.onnx") if preprocess_first else source

    def _fusable_source(self, float_model: Path) -> Path:
        """The float graph the quantizers start from: at an opset with per-channel Q/DQ (>= 13) and
        with spatial means written as GlobalAveragePool, which ONNX Runtime runs in integer kernels."""
        model = load_onnx(float_model)
        changed = False
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and opset < PER_CHANNEL_OPSET:
            upgraded = upgrade_opset(model, PER_CHANNEL_OPSET)
            if upgraded is not None and self._same_logits(model, upgraded):
                model, changed = upgraded, True
                self.notes.append(
                    f"upgraded the model from opset {opset} to {PER_CHANNEL_OPSET} for per-channel quantization "
                    "(float outputs unchanged on calibration samples)"
                )
            else:
                self.per_channel_allowed = False
                self.notes.append(
                    f"opset {opset} has no per-channel DequantizeLinear and the upgrade to {PER_CHANNEL_OPSET} "
                    f"{'failed' if upgraded is None else 'changed the float outputs'}: weights quantized per-tensor"
                )
        pools = mean_to_global_pool(model)
        if pools:
            changed = True
            self.notes.append(
                f"{pools} spatial mean(s) (ReduceMean) written as GlobalAveragePool, which ONNX Runtime runs in "
                "an integer kernel"
            )
        if not changed:
            return float_model
        path = self.work_dir / "fusable.onnx"
        onnx.save(model, str(path))
        return path

    def _same_logits(self, before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
        x = first(self.calibration, 32)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            paths = [Path(tmp) / "before.onnx", Path(tmp) / "after.onnx"]
            for model, path in zip((before, after), paths, strict=True):
                onnx.save(model, str(path))
            a, b = (self._logits(path, x) for path in paths)
        return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))

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

    def _logits(self, path: Path, x: Inputs | Split) -> np.ndarray:
        return onnx_logits(path, x, batch_size=self.eval_batch_size)

    @cached_property
    def float_val_logits(self) -> np.ndarray:
        return self._logits(self.float_model, self.val)

    @cached_property
    def float_val_accuracy(self) -> float:
        return float((self.float_val_logits.argmax(1) == self.val.labels.numpy()).mean())

    @cached_property
    def float_calibration_logits(self) -> np.ndarray:
        return self._logits(self.float_model, self.calibration)

    def evaluate(self, path: Path) -> tuple[float, float]:
        """(validation accuracy, validation logits MSE vs the float model)."""
        logits = self._logits(path, self.val)
        accuracy = float((logits.argmax(1) == self.val.labels.numpy()).mean())
        return accuracy, float(np.mean((logits - self.float_val_logits) ** 2))

    def output_error(self, path: Path) -> float:
        """Logits MSE vs the float model on the calibration samples: the cheap sensitivity proxy."""
        logits = self._logits(path, self.calibration)
        return float(np.mean((logits - self.float_calibration_logits) ** 2))


# ---------------------------------------------------------------- sensitivity and mixed precision


def _tensor_values(path: Path, names: Sequence[str], x: Inputs, work_dir: Path) -> dict[str, np.ndarray]:
    """Values of the named intermediate tensors of ``path`` on ``x`` (Q/DQ run as written: no fusion)."""
    from edgeslim.export.onnx_io import open_session

    model = load_onnx(path)
    present = {o for node in model.graph.node for o in node.output}
    wanted = [n for n in dict.fromkeys(names) if n in present]
    if not wanted:  # ``run([])`` would return every graph output
        return {}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in known)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        session = open_session(probe, graph_optimization="disable")
        values = session.run(wanted, feeds(x, [i.name for i in session.get_inputs()]))
    return dict(zip(wanted, values, strict=True))


def _sqnr_db(reference: np.ndarray, noisy: np.ndarray) -> float:
    noise = float(np.mean((noisy.astype(np.float64) - reference) ** 2))
    signal = float(np.mean(reference.astype(np.float64) ** 2))
    return 10 * float(np.log10(signal / noise)) if noise > 0 and signal > 0 else float("inf")


def layer_sqnr(bench: QuantBench, quantized: Path, samples: int = 64) -> list[dict[str, Any]]:
    """Per weighted node: the signal-to-quantization-noise ratio (dB) of its output in the quantized
    model vs the float model on calibration samples, and how much of it the node itself lost
    (``sqnr_drop_db``: SQNR of its float-named input minus that of its output, i.e. the noise of
    quantizing its input and weights); the nodes that lose most come first.

    One run of each model (Q/DQ evaluated as written, so the noise is the quantization's, not a
    kernel's) ranks every node at once, where ``rank_sensitivity``'s other proxies quantize each
    node alone.
    """
    prepared = load_onnx(bench.prepared)
    names = {q.name for q in bench.nodes("static")}
    float_tensors = {t for node in prepared.graph.node for t in node.output} | {i.name for i in prepared.graph.input}
    qgraph = load_onnx(quantized).graph
    qnodes = {n.name: n for n in qgraph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qgraph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def after_qdq(tensor: str) -> str:
        """What the next layers see: the tensor after its QuantizeLinear -> DequantizeLinear, if any."""
        q = next((c for c in consumers.get(tensor, []) if c.op_type == "QuantizeLinear"), None)
        dq = q and next((c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"), None)
        return dq.output[0] if dq else tensor

    # (node, op, float input, quantized input, float output, quantized output); the quantizer may fold a
    # Relu into the node (its output then carries the Relu's tensor name, which the float graph also has)
    pairs = []
    for node in (n for n in prepared.graph.node if n.name in names):
        qn = qnodes.get(node.name)
        if qn is None or qn.op_type != node.op_type:
            continue  # not a QDQ node (QOperator, dynamic): nothing to compare by name
        out = qn.output[0] if qn.output[0] in float_tensors else node.output[0]
        pairs.append((node.name, node.op_type, node.input[0], qn.input[0], out, after_qdq(qn.output[0])))
    x = first(bench.calibration, samples)
    reference = _tensor_values(bench.prepared, sorted({t for p in pairs for t in (p[2], p[4])}), x, bench.work_dir)
    noisy = _tensor_values(quantized, sorted({t for p in pairs for t in (p[3], p[5])}), x, bench.work_dir)
    rows = []
    for name, op_type, f_in, q_in, f_out, q_out in pairs:
        if f_out not in reference or q_out not in noisy:
            continue
        sqnr = _sqnr_db(reference[f_out], noisy[q_out])
        before = _sqnr_db(reference[f_in], noisy[q_in]) if f_in in reference and q_in in noisy else float("inf")
        drop = before - sqnr if before != float("inf") else None
        rows.append(
            {
                "node": name,
                "op_type": op_type,
                "sqnr_db": round(sqnr, 2),
                "sqnr_drop_db": round(drop, 2) if drop is not None else None,
            }
        )
    # the model's input arrives exact: a first layer's drop is its own SQNR's shortfall from "no noise"
    rows.sort(key=lambda r: -(r["sqnr_drop_db"] if r["sqnr_drop_db"] is not None else 100 - r["sqnr_db"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def rank_sensitivity(
    bench: QuantBench, recipe: Recipe, proxy: Literal["accuracy", "output_error", "sqnr"], exclude: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Rank the quantizable nodes by the damage quantizing them does, most sensitive first.

    ``accuracy``: each node quantized alone, validation accuracy drop vs the float model (ties
    broken by validation logits MSE); ``output_error``: each node alone, logits MSE on the
    calibration samples (no labels, fewer samples); ``sqnr``: everything quantized once, each
    node's output SQNR (:func:`layer_sqnr`; one quantization instead of one per node).
    """
    if proxy == "sqnr" and recipe.method == "static":
        path = bench.quantize(recipe, bench.trial_path("sqnr"), exclude=exclude)
        ranked = [{**r, "fp32": False} for r in layer_sqnr(bench, path) if r["node"] not in exclude]
        path.unlink()
        for rank, row in enumerate(ranked, 1):
            row["rank"] = rank
        return ranked
    if proxy == "sqnr":  # dynamic/int4 graphs do not keep the float tensor names: rank by output error
        proxy = "output_error"
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

KEEP_FLOAT = "keep-float"

# Times several model files side by side (interleaved rounds): per-run latency samples per file.
Timer = Callable[[Sequence[Path]], list[list[float]]]


@dataclass
class Candidate:
    """One configuration ``auto`` tried. ``recipe`` is None for keeping the float model; ``error`` is
    set when quantizing or evaluating it failed (it is listed, never chosen, and ends nothing)."""

    name: str
    recipe: Recipe | None
    val_accuracy: float
    accuracy_drop: float
    p50_ms: float
    size_bytes: int
    path: Path
    fp32_nodes: list[str] = field(default_factory=list)
    chosen: bool = False
    speedup_vs_float: tuple[float, float] | None = None  # bootstrap interval of float p50 / this p50
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None

    def row(self) -> dict[str, Any]:
        def number(x: float) -> float | None:  # NaN (not measured, failed) is not JSON
            return None if x != x else x

        return {
            "name": self.name,
            "settings": self.recipe.settings() if self.recipe else {"method": "float"},
            "label": self.recipe.label() if self.recipe else "float model (not quantized)",
            "fp32_nodes": list(self.fp32_nodes),
            "val_accuracy": number(self.val_accuracy),
            "accuracy_drop": number(self.accuracy_drop),
            "p50_ms": number(self.p50_ms),
            "speedup_vs_float": list(self.speedup_vs_float) if self.speedup_vs_float else None,
            "size_bytes": self.size_bytes,
            "chosen": self.chosen,
            "error": self.error,
        }


def auto_recipes(bench: QuantBench, base: Mapping[str, Any]) -> list[tuple[str, Recipe]]:
    """The candidates that apply to this model (``base``, the stage's flat settings, supplies format,
    percentile, reduce_range and the INT4 settings). optimum's ORTQuantizer is not one: with its
    default preset it is the ``dynamic`` candidate plus quantized attention MatMuls (see
    :mod:`edgeslim.quant.methods`); ``method: optimum`` runs it on its own."""
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
    if edgeslim_bench.u8s8_saturates():  # 7-bit weights: exact on the fast kernels; 8-bit: ORT's slower exact mode
        out.append(
            (
                "static-8bit-weights" if static.reduce_range else "static-7bit-weights",
                variant(calibration="minmax", reduce_range=not static.reduce_range),
            )
        )
    if is_linear_heavy(bench.nodes("static")):
        out.append(("dynamic", recipe_from({**base, "per_channel": True, "weight_type": "int8"}, "dynamic")))
    if any(n.weight_elements >= LARGE_MATMUL_WEIGHT for n in bench.nodes("int4")):
        out.append(("int4", recipe_from(base, "int4")))
    return out


def keep_float_candidate(bench: QuantBench) -> Candidate:
    """Shipping the float input unchanged: always a candidate, so INT8 must earn its place."""
    return Candidate(
        KEEP_FLOAT,
        None,
        bench.float_val_accuracy,
        0.0,
        float("nan"),
        bench.float_model.stat().st_size,
        bench.float_model,
    )


def try_candidate(
    bench: QuantBench, name: str, recipe: Recipe, exclude: Sequence[str] = (), path: Path | None = None
) -> Candidate:
    """Quantize (unless ``path`` is given) and score on validation; a failure becomes a listed row."""
    try:
        if path is None:
            path = bench.quantize(recipe, bench.trial_path(name), exclude=exclude)
        accuracy, _ = bench.evaluate(path)
    except Exception as exc:  # a third-party quantizer failing on one setting must not end the stage
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        return Candidate(name, recipe, float("nan"), float("nan"), float("nan"), 0, Path(), list(exclude), error=reason)
    return Candidate(
        name=name,
        recipe=recipe,
        val_accuracy=accuracy,
        accuracy_drop=bench.float_val_accuracy - accuracy,
        p50_ms=float("nan"),
        size_bytes=path.stat().st_size,
        path=path,
        fp32_nodes=list(exclude),
    )


def time_candidates(candidates: Sequence[Candidate], timer: Timer) -> None:
    """Time every usable candidate side by side with the float model (the keep-float candidate,
    which must be among them); sets each p50 and its speed-up interval vs float."""
    from edgeslim.engine.stats import speedup_interval

    usable = [c for c in candidates if c.usable]
    float_index = next(i for i, c in enumerate(usable) if c.name == KEEP_FLOAT)
    samples = [np.asarray(s) for s in timer([c.path for c in usable])]
    for c, s in zip(usable, samples, strict=True):
        c.p50_ms = float(np.median(s))
        c.speedup_vs_float = speedup_interval(samples[float_index], s)


@dataclass
class AutoResult:
    best: Candidate
    budget_met: bool
    candidates: list[Candidate]
    ranking: list[dict[str, Any]] | None = None  # when FP32 nodes were searched for the most accurate


def auto_select(
    bench: QuantBench,
    base: Mapping[str, Any],
    timer: Timer,
    *,
    max_accuracy_drop: float,
    exclude: Sequence[str] = (),
    fp32_search: tuple[Literal["accuracy", "output_error"], int] | None = None,
) -> AutoResult:
    """Try every candidate that applies, time them side by side with the float model, and keep the
    fastest within the budget. Keeping the float model is always a candidate.

    When no quantized candidate is within the budget and ``fp32_search`` = (proxy, max FP32
    nodes) is given, the most accurate one gets a mixed-precision search and the result joins
    the table as ``<name>+fp32`` before timing.
    """
    candidates = [keep_float_candidate(bench)]
    candidates += [try_candidate(bench, name, recipe, exclude=exclude) for name, recipe in auto_recipes(bench, base)]
    candidates += region_candidates(bench, candidates, exclude)
    quantized = [c for c in candidates if c.usable and c.recipe is not None]
    ranking = None
    if fp32_search is not None and quantized and not any(_within(c, max_accuracy_drop) for c in quantized):
        proxy, max_fp32_nodes = fp32_search
        seed = max(quantized, key=lambda c: c.val_accuracy)
        assert seed.recipe is not None
        ranking = rank_sensitivity(bench, seed.recipe, proxy, exclude=exclude)
        search = search_mixed_precision(
            bench,
            seed.recipe,
            [r["node"] for r in ranking],
            max_accuracy_drop=max_accuracy_drop,
            max_fp32_nodes=max_fp32_nodes,
            exclude=exclude,
        )
        fp32 = [*exclude, *search.best.fp32_nodes]
        candidates.append(try_candidate(bench, f"{seed.name}+fp32", seed.recipe, exclude=fp32, path=search.best.path))
    time_candidates(candidates, timer)
    best, within = choose_candidate(candidates, max_accuracy_drop)
    return AutoResult(best, within, candidates, ranking)


def region_candidates(bench: QuantBench, candidates: Sequence[Candidate], exclude: Sequence[str]) -> list[Candidate]:
    """Latency-aware mixed precision: the first usable static candidate again with one region kept in
    float (:func:`float_regions`), each timed beside the others, so a region is quantized only where
    that measures faster."""
    seed = next((c for c in candidates if c.usable and c.recipe is not None and c.recipe.method == "static"), None)
    if seed is None:
        return []
    assert seed.recipe is not None
    quantizable = bench.nodes("static")
    regions = float_regions(load_onnx(bench.model_for("static")), WEIGHTED_OPS["static"])
    out = []
    for region, nodes in regions.items():
        if nodes and len(set(nodes) | set(exclude)) < len(quantizable):
            name = f"{seed.name}+{region}-fp32"
            out.append(try_candidate(bench, name, seed.recipe, exclude=[*exclude, *nodes]))
    return out


def _within(c: Candidate, max_accuracy_drop: float) -> bool:
    return c.usable and c.accuracy_drop <= max_accuracy_drop + ACCURACY_EPS


def choose_candidate(candidates: Sequence[Candidate], max_accuracy_drop: float) -> tuple[Candidate, bool]:
    """The fastest candidate within the budget; else the most accurate (then fastest). Marks it chosen.

    With the keep-float candidate in the list (drop 0) the budget is always met; without it (a
    caller's own list), ``within`` says whether any candidate met it.
    """
    usable = [c for c in candidates if c.usable]
    within = [c for c in usable if _within(c, max_accuracy_drop)]
    fastest_within = min(within, key=lambda c: c.p50_ms) if within else None
    best = fastest_within or max(usable, key=lambda c: (c.val_accuracy, -c.p50_ms))
    for c in candidates:
        c.chosen = c is best
    return best, bool(within)


QUANTIZED_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul")


def quantized_weight_count(model: onnx.ModelProto) -> int:
    """How many weighted nodes compute with quantized weights (QDQ, QOperator, dynamic or INT4). A
    MatMulInteger of two activations (optimum's dynamic INT8 also quantizes attention's) has no weight."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    count = 0
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and producers.get(node.input[1]) == "DynamicQuantizeLinear":
            continue
        if node.op_type in QUANTIZED_OPS or node.op_type == "MatMulNBits":
            count += 1
        elif node.op_type in WEIGHTED_OPS["static"] and len(node.input) > 1:
            count += producers.get(node.input[1]) == "DequantizeLinear"
    return count
