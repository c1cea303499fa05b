"""ONNX graph rewrites around ONNX Runtime's quantizers (see ``edgeslim.quant.ort`` for why each
is needed) and the weighted nodes a method quantizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Nodes whose weights a method quantizes: the units of sensitivity analysis and of ``exclude_nodes``.
WEIGHTED_OPS: dict[str, tuple[str, ...]] = {
    "static": ("Conv", "ConvTranspose", "Gemm", "MatMul"),
    "dynamic": ("Conv", "MatMul"),  # after gemm_to_matmul
    "int4": ("MatMul",),  # after gemm_to_matmul
    "optimum": ("Conv", "MatMul"),  # optimum's ORTQuantizer, dynamic: the same graph as dynamic
}
LINEAR_OPS = ("Gemm", "MatMul")
LARGE_MATMUL_WEIGHT = 16_384  # elements (128x128): below this, INT4 saves little and costs accuracy


@dataclass(frozen=True)
class QuantNode:
    """A node whose weights get quantized: the unit of sensitivity analysis and of FP32 exclusion."""

    name: str
    op_type: str
    weight_elements: int


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm`` nodes with a constant weight as ``MatMul`` (+ ``Add`` for the bias), in place.

    The MatMul keeps the Gemm's node name, so ``exclude_nodes`` and sensitivity tables mean the
    same node for every method. Returns how many nodes were rewritten.
    """
    graph = model.graph
    inits = _initializers(graph)
    new_nodes: list[onnx.NodeProto] = []
    converted = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        beta = float(attrs.get("beta", 1.0))
        if (
            weight is None
            or len(weight.dims) != 2
            or attrs.get("transA", 0)
            or (bias is not None and beta != 1.0 and bias not in inits)
        ):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        w = (w.T if attrs.get("transB", 0) else w) * np.asarray(attrs.get("alpha", 1.0), dtype=w.dtype)
        w_name = f"{weight.name}_matmul"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w_name], [product], name=node.name))
        if bias is not None:
            if beta != 1.0:
                scaled = numpy_helper.to_array(inits[bias])
                scaled = scaled * np.asarray(beta, dtype=scaled.dtype)
                bias = f"{bias}_beta"
                graph.initializer.append(numpy_helper.from_array(scaled, bias))
            new_nodes.append(onnx.helper.make_node("Add", [product, bias], node.output, name=f"{node.name}_bias"))
        converted += 1
    graph.ClearField("node")
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    return converted


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)


def shield_float_nodes(model: onnx.ModelProto) -> int:
    """Stop ONNX Runtime from quantizing the Conv/Gemm nodes that were meant to stay FP32.

    ONNX Runtime's ``WeightBiasQuantization`` graph transformer (basic level, on by default)
    quantizes the float weight of any Conv/ConvTranspose/Gemm whose input comes from a
    DequantizeLinear, per-tensor symmetric INT8: it silently undoes ``nodes_to_exclude`` for every
    excluded node whose predecessor is quantized (QDQ and QOperator alike). Such inputs are
    dequantized here with the same arithmetic spelt out (Cast, Sub, Mul), which the transformer
    does not match. Returns how many nodes were shielded.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = _initializers(model.graph)
    new_nodes: list[onnx.NodeProto] = []
    shielded = 0
    for node in model.graph.node:
        dq = producers.get(node.input[0]) if node.input else None
        weight_from = producers.get(node.input[1]) if len(node.input) > 1 else None
        if (
            node.op_type in ("Conv", "ConvTranspose", "Gemm")
            and dq is not None
            and dq.op_type == "DequantizeLinear"
            and not (weight_from is not None and weight_from.op_type == "DequantizeLinear")  # not quantized
            and dq.input[1] in inits
            and not inits[dq.input[1]].dims  # a per-tensor scale: the transformer's pattern
        ):
            base = f"{node.name}_input_dequantized"
            value = f"{base}_cast"
            new_nodes.append(onnx.helper.make_node("Cast", [dq.input[0]], [value], name=value, to=TensorProto.FLOAT))
            if len(dq.input) > 2 and dq.input[2]:
                zero = f"{base}_zero_point"
                new_nodes.append(onnx.helper.make_node("Cast", [dq.input[2]], [zero], name=zero, to=TensorProto.FLOAT))
                new_nodes.append(onnx.helper.make_node("Sub", [value, zero], [f"{base}_sub"], name=f"{base}_sub"))
                value = f"{base}_sub"
            new_nodes.append(onnx.helper.make_node("Mul", [value, dq.input[1]], [base], name=base))
            node.input[0] = base
            shielded += 1
        new_nodes.append(node)
    if shielded:
        model.graph.ClearField("node")
        model.graph.node.extend(new_nodes)
        _drop_dead_nodes(model.graph)
    return shielded


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody reads (the Q/DQ pairs a rewiring left behind)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        live = [n for n in graph.node if any(o in used for o in n.output)]
        if len(live) == len(graph.node):
            break
        graph.ClearField("node")
        graph.node.extend(live)
    _drop_unused_initializers(graph)


def weighted_nodes(model: onnx.ModelProto, op_types: Sequence[str]) -> list[QuantNode]:
    """Nodes of ``op_types`` whose second input is a constant weight, in graph order."""
    inits = _initializers(model.graph)
    out = []
    for node in model.graph.node:
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in inits:
            dims = inits[node.input[1]].dims
            out.append(QuantNode(node.name, node.op_type, int(np.prod(dims)) if dims else 1))
    return out


# Compute ONNX Runtime has no integer kernel for: between quantized neighbours each runs in float
# with a Q/DQ pair around it (its QDQ selectors fuse Conv, MatMul, Gemm, Add, Mul, pooling, Concat,
# Sigmoid, Softmax... but not these).
NO_INTEGER_KERNEL = frozenset(
    {
        "HardSigmoid",
        "HardSwish",
        "Gelu",
        "Erf",
        "LayerNormalization",
        "Div",
        "Pow",
        "Sqrt",
        "Tanh",
        "Sub",
        "Exp",
        "ReduceMean",
        "Softplus",
        "Mish",
        "Elu",
        "Selu",
        "Log",
    }
)


def float_regions(model: onnx.ModelProto, op_types: Sequence[str]) -> dict[str, list[str]]:
    """Weighted nodes that may run faster in float than in INT8, by region, for latency-aware mixed
    precision (each region is timed as a candidate, never assumed):

    * ``depthwise``: depthwise convolutions (little compute per weight: the integer kernel's
      quantize/requantize overhead can outweigh it);
    * ``near-float-ops``: weighted nodes feeding or fed by ops without integer kernels (squeeze-
      excitation gates, hard-swish, GELU, LayerNorm), so those ops sit in a float region with one
      Q/DQ boundary instead of a Q/DQ pair each."""
    inits = _initializers(model.graph)
    weighted = {n.name for n in weighted_nodes(model, op_types)}
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    depthwise, near = [], []
    for node in model.graph.node:
        if node.name not in weighted:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and group > 1 and weight is not None and weight.dims and group == weight.dims[0]:
            depthwise.append(node.name)
        neighbours = [producer[i] for i in node.input if i in producer]
        neighbours += [c for out in node.output for c in consumers.get(out, [])]
        if any(n.op_type in NO_INTEGER_KERNEL for n in neighbours):
            near.append(node.name)
    return {"depthwise": depthwise, "near-float-ops": near}


def is_linear_heavy(nodes: Sequence[QuantNode]) -> bool:
    """True when Linear (Gemm/MatMul) weights hold at least half of the weights: where dynamic INT8 pays."""
    total = sum(n.weight_elements for n in nodes)
    linear = sum(n.weight_elements for n in nodes if n.op_type in LINEAR_OPS)
    return total > 0 and linear * 2 >= total


def mean_to_global_pool(model: onnx.ModelProto) -> int:
    """Rewrite ``ReduceMean`` over the spatial axes of a 4-D tensor as ``GlobalAveragePool``, in place.

    The dynamo exporter writes ``AdaptiveAvgPool2d(1)`` and ``x.mean((2, 3))`` as ``ReduceMean``,
    which has no integer kernel in ONNX Runtime: a quantized model runs it in float between a
    DequantizeLinear and a QuantizeLinear. ``GlobalAveragePool`` fuses into
    ``QLinearGlobalAveragePool``. Without ``keepdims`` a ``Squeeze`` follows (which ONNX Runtime
    runs on the quantized tensor directly). Same arithmetic; returns how many nodes were rewritten.
    """
    graph = model.graph
    inits = _initializers(graph)
    ranks = _tensor_ranks(model)
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in inits:
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
        rank = ranks.get(node.input[0]) if node.input else None
        if node.op_type != "ReduceMean" or rank != 4 or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            new_nodes.append(node)
            continue
        keep = bool(attrs.get("keepdims", 1))
        pooled = node.output[0] if keep else f"{node.output[0]}_pooled"
        new_nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
        if not keep:
            axes_name = f"{node.name}_squeeze_axes"
            graph.initializer.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), axes_name))
            new_nodes.append(
                onnx.helper.make_node("Squeeze", [pooled, axes_name], node.output, name=f"{node.name}_squeeze")
            )
        rewritten += 1
    if rewritten:
        graph.ClearField("node")
        graph.node.extend(new_nodes)
        _drop_unused_initializers(graph)
    return rewritten


def _tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Known ranks of the graph's tensors (after ONNX shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot follow: rewrite nothing that needs ranks
        return {}
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in values
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }
