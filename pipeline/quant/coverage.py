"""What ONNX Runtime really runs: INT8 coverage of the graph it executes.

A QDQ file says which tensors *may* be integer; whether a convolution runs in an integer kernel
is decided when ONNX Runtime loads the file: its QDQ selector/action transformers
(``onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc``)
fuse ``DQ -> Conv -> Q`` into ``QLinearConv``, ``DQ -> Gemm (-> Q)`` into ``QGemm``, ``DQ -> MatMul``
into ``QLinearMatMul`` / ``MatMulIntegerToFloat``, ``Add``/``Mul`` into ``QLinearAdd``/``QLinearMul``,
``AveragePool``/``GlobalAveragePool``/``Sigmoid``/``LeakyRelu``/``Softmax`` into their QLinear
forms, ``Concat`` into ``QLinearConcat``, and drop Q/DQ around ``MaxPool``/``Reshape``/``Transpose``...
Anything else (HardSwish, HardSigmoid, GELU, LayerNormalization, Erf, ...) has no integer kernel
and runs in float between a DequantizeLinear and a QuantizeLinear. A pattern the transformers do
not match leaves a float Conv whose weights are dequantized at *every* inference.

So coverage is read from the optimized graph ONNX Runtime saves (``optimized_model_filepath``) at
the level and session options the device profile uses, never from the QDQ file.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

# Weighted compute that runs on integer kernels (weights and activations, or weights only).
INTEGER_COMPUTE = {
    "QLinearConv": "conv",
    "ConvInteger": "conv",
    "QGemm": "linear",
    "QLinearMatMul": "linear",
    "MatMulInteger": "linear",
    "MatMulIntegerToFloat": "linear",
    "DynamicQuantizeMatMul": "linear",
    "MatMulNBits": "linear",
    "QAttention": "linear",
}
# The same compute left in float (after ONNX Runtime's own float fusions and NCHWc layout).
FLOAT_COMPUTE = {
    "Conv": "conv",
    "FusedConv": "conv",
    "ConvTranspose": "conv",
    "Gemm": "linear",
    "FusedGemm": "linear",
    "MatMul": "linear",
    "FusedMatMul": "linear",
}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass
class Coverage:
    """INT8 coverage of one model as ONNX Runtime executes it."""

    integer: dict[str, int]  # "conv"/"linear" -> nodes on integer kernels
    total: dict[str, int]  # "conv"/"linear" -> all such nodes
    qdq_nodes: int  # Q/DQ nodes left in the executed graph
    weight_dequantize: int  # DequantizeLinear of a constant: weights dequantized at every run
    float_islands: dict[str, int]  # op types fed by a DequantizeLinear (run in float between Q/DQ)
    op_types: dict[str, int] = field(default_factory=dict)  # every op type in the executed graph
    qdq_ms: float | None = None  # profiler: mean ms per run in Q/DQ nodes
    op_ms: float | None = None  # profiler: mean ms per run over all nodes

    @property
    def weighted(self) -> int:
        return sum(self.total.values())

    @property
    def integer_fraction(self) -> float:
        """Share of conv/linear nodes on integer kernels (0 when the model has none)."""
        return sum(self.integer.values()) / self.weighted if self.weighted else 0.0

    @property
    def is_int8(self) -> bool:
        """Called INT8 only if most of its convs/linears really run in integer kernels."""
        return self.weighted > 0 and self.integer_fraction >= 0.5

    def summary(self) -> str:
        parts = [f"{self.integer.get(k, 0)}/{n} {k}s" for k, n in sorted(self.total.items()) if n] or [
            "no conv/linear nodes"
        ]
        text = f"INT8 coverage: {', '.join(parts)} in integer kernels"
        if self.float_islands:
            text += "; float between Q/DQ: " + ", ".join(f"{op} x{n}" for op, n in sorted(self.float_islands.items()))
        if self.weight_dequantize:
            text += f"; {self.weight_dequantize} weight tensor(s) dequantized at every run"
        text += f"; {self.qdq_nodes} Q/DQ node(s) at run time"
        if self.qdq_ms is not None and self.op_ms:
            text += f" ({self.qdq_ms:.3f} ms, {self.qdq_ms / self.op_ms:.0%} of op time)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "integer": self.integer,
            "total": self.total,
            "integer_fraction": self.integer_fraction,
            "is_int8": self.is_int8,
            "qdq_nodes": self.qdq_nodes,
            "weight_dequantize": self.weight_dequantize,
            "float_islands": self.float_islands,
            "op_types": self.op_types,
            "qdq_ms": self.qdq_ms,
            "op_ms": self.op_ms,
            "summary": self.summary(),
        }


def executed_graph(model: Path, graph_optimization: str = "all", exact_int8: bool = True) -> onnx.ModelProto:
    """The graph ONNX Runtime executes for ``model`` at ``graph_optimization`` (CPU provider)."""
    import onnxruntime as ort

    from edgeslim.devices.edgeslim_bench import session_options
    from edgeslim.export.onnx_io import check_onnx_file, load_onnx, needs_exact_int8

    check_onnx_file(model)
    with tempfile.TemporaryDirectory(prefix="edgeslim-executed-") as tmp:
        options = session_options(1, graph_optimization, exact_int8 and needs_exact_int8(model))
        out = Path(tmp) / "executed.onnx"
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])  # checked just above
        return load_onnx(out, "the executed graph", external_data=False)


def graph_coverage(graph: onnx.GraphProto) -> Coverage:
    """Count integer vs float compute in an (executed) graph."""
    constants = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    integer: Counter[str] = Counter()
    total: Counter[str] = Counter()
    islands: Counter[str] = Counter()
    weight_dq = 0
    for node in graph.node:
        kind = INTEGER_COMPUTE.get(node.op_type) or FLOAT_COMPUTE.get(node.op_type)
        if kind:
            total[kind] += 1
            integer[kind] += node.op_type in INTEGER_COMPUTE
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in constants:
            weight_dq += 1
        if node.op_type not in QDQ_OPS and any(
            (p := producers.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input
        ):
            islands[node.op_type] += 1
    return Coverage(
        integer=dict(integer),
        total=dict(total),
        qdq_nodes=sum(n.op_type in QDQ_OPS for n in graph.node),
        weight_dequantize=weight_dq,
        float_islands=dict(islands),
        op_types=dict(Counter(n.op_type for n in graph.node)),
    )


def runtime_coverage(
    model: Path,
    graph_optimization: str = "all",
    exact_int8: bool = True,
    op_profile: dict[str, dict[str, float]] | None = None,
) -> Coverage:
    """Coverage of ``model`` as ONNX Runtime runs it; ``op_profile`` (the latency worker's per-op-type
    times) adds the time spent in Q/DQ."""
    coverage = graph_coverage(executed_graph(model, graph_optimization, exact_int8).graph)
    if op_profile:
        coverage.op_ms = sum(v["mean_ms_per_run"] for v in op_profile.values())
        coverage.qdq_ms = sum(op_profile.get(op, {}).get("mean_ms_per_run", 0.0) for op in QDQ_OPS)
    return coverage


def op_times(
    model: Path, sample: Any, graph_optimization: str = "all", exact_int8: bool = True, runs: int = 50
) -> dict[str, float]:
    """Milliseconds per run by op type (ONNX Runtime's profiler, one thread) on ``sample`` (one batch
    of inputs: a tensor or named tensors)."""
    from edgeslim.data.batches import feeds
    from edgeslim.devices.edgeslim_bench import op_profile
    from edgeslim.export.onnx_io import check_onnx_file, load_onnx, needs_exact_int8

    check_onnx_file(model)
    graph = load_onnx(model, external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    feed = feeds(sample, [i.name for i in graph.input if i.name not in initializers])
    profile = op_profile(str(model), 1, graph_optimization, feed, runs, exact_int8 and needs_exact_int8(model))
    return {op: v["mean_ms_per_run"] for op, v in profile.items()}


# (what, its integer-kernel ops, its float ops): compute compared between the two models
FAMILIES = (
    ("convolutions", {"QLinearConv", "ConvInteger"}, {"Conv", "FusedConv"}),
    (
        "matrix products",
        {"QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"},
        {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"},
    ),
)


def _kind(op: str) -> str:
    if op in QDQ_OPS:
        return "qdq"
    if op.startswith("QLinear") or op in INTEGER_COMPUTE:
        return "integer"
    return "float"


def _top(times: dict[str, float], n: int = 3) -> str:
    return ", ".join(f"{op} {ms:.3f}" for op, ms in sorted(times.items(), key=lambda kv: -kv[1])[:n])


def why_int8_loses(int8_ops: dict[str, float], float_ops: dict[str, float]) -> str:
    """Where the INT8 model's time goes against the float model's, by op type (profiled runs): the
    sentence a report gives when INT8 does not pay."""
    parts = {k: {op: ms for op, ms in int8_ops.items() if _kind(op) == k} for k in ("integer", "qdq", "float")}
    total = {k: sum(v.values()) for k, v in parts.items()}
    float_total = sum(float_ops.values())
    text = (
        f"per-op time (ONNX Runtime profiler, ms per run): INT8 model {sum(total.values()):.3f} = integer kernels "
        f"{total['integer']:.3f} ({_top(parts['integer'])}), Q/DQ {total['qdq']:.3f}, float ops {total['float']:.3f}"
        + (f" ({_top(parts['float'])})" if parts["float"] else "")
        + f"; float model {float_total:.3f} ({_top(float_ops)})"
    )
    compared = []  # the same compute in integer and in float kernels, largest gap first
    for what, integer_ops, float_names in FAMILIES:
        a = sum(ms for op, ms in int8_ops.items() if op in integer_ops)
        b = sum(ms for op, ms in float_ops.items() if op in float_names)
        if a and b:
            compared.append((a - b, f"{what} {a:.3f} ms in integer kernels vs {b:.3f} ms in float"))
    shared = sum(ms for op, ms in float_ops.items() if _kind(op) == "float" and op in int8_ops)  # both run these
    extra = total["qdq"] + total["float"] - shared
    compared.append((extra, f"Q/DQ and the float ops between them {total['qdq'] + total['float']:.3f} ms"))
    compared.sort(key=lambda c: -c[0])
    slower = [text for gap, text in compared if gap > 0]
    if slower:
        text += ". Where the INT8 model loses, largest first: " + "; ".join(slower)
    return text
