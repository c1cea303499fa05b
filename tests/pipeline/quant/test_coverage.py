"""INT8 coverage read from the graph ONNX Runtime executes, on the blocks standard edge CNNs are
made of: conv+BN+ReLU, a residual add, depthwise convs, squeeze-excitation (sigmoid- and
hard-sigmoid-gated), hard-swish and a linear head. Calibration uses real digits images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeslim.export.onnx_io import export_onnx, onnx_logits
from edgeslim.quant.coverage import graph_coverage, runtime_coverage
from edgeslim.quant.graph import mean_to_global_pool
from edgeslim.quant.methods import recipe_from
from edgeslim.quant.ort import QuantBench


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, gate: nn.Module):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(torch.relu(self.reduce(self.pool(x)))))


class Blocks(nn.Module):
    """Stem conv+BN+ReLU, a ResNet basic block, an inverted residual with a depthwise conv and SE,
    a projection and a linear head on the spatial mean."""

    def __init__(self, activation: str, c: int = 16):
        super().__init__()
        act = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU}[activation]
        gate = {"relu": nn.Sigmoid, "hardswish": nn.Hardsigmoid, "silu": nn.Sigmoid}[activation]
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), act())
        self.depthwise = nn.Sequential(
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1, groups=2 * c, bias=False), nn.BatchNorm2d(2 * c), act()
        )
        self.se = SqueezeExcite(2 * c, gate())
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.conv2(self.conv1(x)))  # residual add + ReLU
        x = self.project(self.se(self.depthwise(self.expand(x))))
        return self.head(x.mean((2, 3)))


def quantized_blocks(tmp_path: Path, data, activation: str) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = Blocks(activation).eval()
    float_path = export_onnx(model, data.example_batch(2), tmp_path / "float.onnx")
    work = tmp_path / "work"
    work.mkdir()
    bench = QuantBench(float_path, work, data.train.tensors[0][:64].numpy(), data.val.tensors)
    return float_path, bench.quantize(recipe_from({}, "static"), tmp_path / "int8.onnx")


@pytest.mark.parametrize("activation", ["relu", "silu", "hardswish"])
def test_every_conv_and_linear_runs_in_an_integer_kernel(tmp_path, data, activation):
    float_path, int8_path = quantized_blocks(tmp_path, data, activation)
    before = runtime_coverage(float_path)
    assert before.total == {"conv": 8, "linear": 1} and before.integer_fraction == 0 and not before.is_int8
    after = runtime_coverage(int8_path)
    assert after.integer == {"conv": 8, "linear": 1} and after.is_int8
    assert after.weight_dequantize == 0  # no weight is dequantized at run time
    ops = after.op_types
    assert ops["QLinearAdd"] == 1 and ops["QLinearGlobalAveragePool"] == 2 and ops["QLinearMul"] >= 1
    if activation == "hardswish":  # ONNX Runtime has no integer HardSigmoid: the one float island
        assert set(after.float_islands) == {"HardSigmoid"}
    else:
        assert after.float_islands == {} and after.qdq_nodes == 2  # quantize the input, dequantize the logits
    assert "9/9" not in after.summary() and "8/8 convs, 1/1 linears in integer kernels" in after.summary()


def test_a_float_conv_between_qdq_is_found(tmp_path, data):
    """Reading the executed graph, not the file: a Conv whose output has no QuantizeLinear stays float
    in ONNX Runtime (its weights dequantized every run)."""
    _, int8_path = quantized_blocks(tmp_path, data, "relu")
    model = onnx.load(str(int8_path))
    graph = model.graph
    conv = next(n for n in graph.node if n.op_type == "Conv")
    consumers = [n for n in graph.node if conv.output[0] in n.input]
    assert consumers and all(n.op_type == "QuantizeLinear" for n in consumers)
    quant = consumers[0]
    dq = next(n for n in graph.node if quant.output[0] in n.input)
    for node in graph.node:  # bypass the Q/DQ pair after the conv: its output stays float
        for i, name in enumerate(node.input):
            if name == dq.output[0]:
                node.input[i] = conv.output[0]
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    coverage = runtime_coverage(broken)
    # the stem conv, and conv1 that now reads its float output, run in float
    assert coverage.integer["conv"] == 6 and coverage.total["conv"] == 8 and coverage.weight_dequantize >= 2
    assert "6/8 convs" in coverage.summary() and "dequantized at every run" in coverage.summary()


def test_spatial_mean_becomes_global_average_pool_with_the_same_outputs(tmp_path, data):
    class Means(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = nn.functional.adaptive_avg_pool2d(x, 1)  # keepdims
            return x.mean((2, 3)) + pooled.flatten(1) + x.mean(-1).sum(-1)  # the last is not a spatial mean

    path = export_onnx(Means(), data.example_batch(2), tmp_path / "means.onnx")
    model = onnx.load(str(path))
    assert mean_to_global_pool(model) == 2
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GlobalAveragePool") == 2 and "ReduceMean" in ops
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(model, str(rewritten))
    x = data.val.tensors[0]
    np.testing.assert_allclose(onnx_logits(rewritten, x), onnx_logits(path, x), rtol=1e-5, atol=1e-6)


def test_graph_coverage_of_a_model_without_weights():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    coverage = graph_coverage(graph)
    assert coverage.weighted == 0 and coverage.integer_fraction == 0 and not coverage.is_int8
    assert "no conv/linear nodes" in coverage.summary()


def test_why_int8_loses_names_the_ops_that_cost():
    from edgeslim.quant.coverage import why_int8_loses

    float_ops = {"Conv": 0.50, "Mul": 0.10}
    slow_convs = {"QLinearConv": 0.80, "QuantizeLinear": 0.2, "DequantizeLinear": 0.2, "HardSigmoid": 0.17}
    text = why_int8_loses(slow_convs, float_ops)
    assert text.startswith("per-op time (ONNX Runtime profiler, ms per run): INT8 model 1.370 = integer kernels 0.800")
    assert "Q/DQ 0.400, float ops 0.170 (HardSigmoid 0.170); float model 0.600" in text
    assert text.endswith(
        "Where the INT8 model loses, largest first: Q/DQ and the float ops between them 0.570 ms; "
        "convolutions 0.800 ms in integer kernels vs 0.500 ms in float"
    )
    fast_convs = {"QLinearConv": 0.20, "QuantizeLinear": 0.3, "DequantizeLinear": 0.3, "HardSigmoid": 0.1}
    text = why_int8_loses(fast_convs, float_ops)
    assert text.endswith("largest first: Q/DQ and the float ops between them 0.700 ms") and "convolutions" not in text
