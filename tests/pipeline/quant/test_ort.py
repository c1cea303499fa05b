"""ONNX Runtime quantization helpers on small hand-built graphs with trained digits weights.

The graphs mimic what the dynamo exporter writes for an MLP (``Gemm`` with ``transB=1``), so
these tests cover the Gemm traps of onnxruntime 1.32's dynamic and INT4 quantizers directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgeslim.data.datasets import DataSplits
from edgeslim.export.onnx_io import onnx_logits
from edgeslim.quant.methods import StaticInt8, recipe_from
from edgeslim.quant.ort import (
    Candidate,
    QuantBench,
    choose_candidate,
    gemm_to_matmul,
    is_linear_heavy,
    layer_sqnr,
    ort_optimize,
    quantized_weight_count,
    rank_sensitivity,
    search_mixed_precision,
    weighted_nodes,
)
from edgeslim.train.loop import TrainLoopConfig, fit

Layers = list[tuple[np.ndarray, np.ndarray]]  # (weight [out, in], bias [out]) per Linear, like nn.Linear
NODE_NAMES = ("fc1", "fc2", "fc3")


@pytest.fixture(scope="module")
def mlp_layers(data: DataSplits) -> Layers:
    """A 64-128-128-10 MLP trained on the digits slice (about 90% accuracy)."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    cfg = TrainLoopConfig(epochs=15, batch_size=32, optimizer={"lr": 0.003}, patience=None)
    fit(model, data.train, data.val, cfg, seed=0)
    return [
        (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in model if isinstance(m, nn.Linear)
    ]


def write_mlp(path: Path, layers: Layers) -> Path:
    """The graph the dynamo exporter writes for an MLP: Reshape, then Gemm(transB=1) + Relu per layer."""
    inits = [numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"], name="flatten")]
    x = "flat"
    for i, (w, b) in enumerate(layers):
        name = NODE_NAMES[i]
        inits += [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]
        out = "logits" if i == len(layers) - 1 else f"{name}_out"
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{name}_relu"], name=f"{name}_relu"))
            x = f"{name}_relu"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def constant_pixel(data: DataSplits) -> tuple[int, float]:
    """A pixel that has the same value in every image of every split (digits' corners are blank)."""
    x = torch.cat([data.train.tensors[0], data.val.tensors[0], data.test.tensors[0]]).flatten(1)
    j = int(torch.nonzero(x.std(0) == 0)[0])
    return j, float(x[0, j])


def make_fragile(layers: Layers, data: DataSplits, which: tuple[str, ...]) -> Layers:
    """Give a layer a few huge weights that its inputs never exercise, so INT8 weight scales blow up.

    ``fc1``: a huge weight on a constant pixel, compensated in the bias (the function is unchanged).
    ``fc2``: hidden unit 0 of fc1 is made dead (always 0 after Relu) and fc2 gets huge weights from
    it (the float model just loses that one unit). Quantizing the fragile layer, per-tensor or
    per-channel, rounds all its other weights to zero; the other layers are unaffected.
    """
    (w1, b1), (w2, b2), last = [(w.copy(), b.copy()) for w, b in layers]
    signs = np.where(np.arange(w1.shape[0]) % 2 == 0, 1.0, -1.0).astype(np.float32)
    if "fc2" in which:
        w1[0], b1[0] = 0.0, -1.0
        w2[:, 0] = 1000 * np.abs(w2).max() * signs[: w2.shape[0]]
    if "fc1" in which:
        j, value = constant_pixel(data)
        delta = 1000 * np.abs(w1).max() * signs
        w1[:, j] += delta
        b1 -= delta * value
    return [(w1, b1), (w2, b2), last]


def make_bench(tmp_path: Path, data: DataSplits, layers: Layers, samples: int = 128) -> QuantBench:
    model = write_mlp(tmp_path / "float.onnx", layers)
    work = tmp_path / "work"
    work.mkdir()
    return QuantBench(model, work, data.train.tensors[0][:samples].numpy(), data.val.tensors)


def test_gemm_to_matmul_keeps_names_and_outputs(tmp_path, data):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 64)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    variants = [
        ({"transB": 1}, w, b),
        ({"transB": 0, "alpha": 0.5, "beta": 2.0}, w.T.copy(), b),
        ({"transB": 1}, w, None),
    ]
    x = data.test.tensors[0][:16]
    for attrs, weight, bias in variants:
        inits = [
            numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape"),
            numpy_helper.from_array(weight, "W"),
        ]
        inputs = ["flat", "W"]
        if bias is not None:
            inits.append(numpy_helper.from_array(bias, "B"))
            inputs.append("B")
        graph = helper.make_graph(
            [
                helper.make_node("Reshape", ["input", "shape"], ["flat"], name="flatten"),
                helper.make_node("Gemm", inputs, ["logits"], name="head", **attrs),
            ],
            "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        before = tmp_path / "gemm.onnx"
        onnx.save(model, str(before))
        assert gemm_to_matmul(model) == 1
        after = tmp_path / "matmul.onnx"
        onnx.save(model, str(after))
        ops = {n.name: n.op_type for n in model.graph.node}
        assert ops["head"] == "MatMul" and "Gemm" not in ops.values()
        assert "W" not in {t.name for t in model.graph.initializer}  # the transposed copy replaced it
        np.testing.assert_allclose(onnx_logits(after, x), onnx_logits(before, x), rtol=1e-5, atol=1e-5)


def test_weighted_nodes_and_linear_heavy(tmp_path, data, mlp_layers):
    model = onnx.load(str(write_mlp(tmp_path / "m.onnx", mlp_layers)))
    nodes = weighted_nodes(model, ("Conv", "Gemm", "MatMul"))
    assert [(n.name, n.op_type, n.weight_elements) for n in nodes] == [
        ("fc1", "Gemm", 64 * 128),
        ("fc2", "Gemm", 128 * 128),
        ("fc3", "Gemm", 128 * 10),
    ]
    assert is_linear_heavy(nodes)


@pytest.mark.parametrize("method", ["static", "dynamic", "int4", "optimum"])
def test_quantize_one_node_or_all_but_one(tmp_path, data, mlp_layers, method):
    """``only`` and ``exclude`` name the exporter's Gemm nodes for every method (ORT renames them in
    quantize_dynamic and ignores nodes_to_include in MatMulNBitsQuantizer)."""
    bench = make_bench(tmp_path, data, mlp_layers)
    recipe = recipe_from({"method": method})
    assert [n.name for n in bench.nodes(method)] == list(NODE_NAMES)
    full = bench.quantize(recipe, tmp_path / "all.onnx")
    only = bench.quantize(recipe, tmp_path / "only.onnx", only=["fc2"])
    but = bench.quantize(recipe, tmp_path / "but.onnx", exclude=["fc2"])
    assert quantized_weight_count(onnx.load(str(full))) == 3
    assert quantized_weight_count(onnx.load(str(only))) == 1
    assert quantized_weight_count(onnx.load(str(but))) == 2
    for path in (full, only, but):
        accuracy, _ = bench.evaluate(path)
        assert accuracy >= bench.float_val_accuracy - 0.05


def _matmul_integer_weights(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(quantized weight, its zero points) of every MatMulInteger with a constant weight, in graph order."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulInteger" and n.input[1] in inits]
    return [(inits[n.input[1]], inits[n.input[3]]) for n in nodes]


@pytest.mark.parametrize(
    "settings, dtype, per_channel, seven_bit",
    [
        ({}, np.int8, True, False),  # avx512_vnni: u8s8, per-channel, 8-bit
        ({"optimum_preset": "avx2"}, np.uint8, True, False),  # avx2: u8u8
        ({"optimum_preset": "avx512", "reduce_range": True, "per_channel": False}, np.int8, False, True),
    ],
)
def test_optimum_presets_set_weight_type_granularity_and_range(
    tmp_path, data, mlp_layers, settings, dtype, per_channel, seven_bit
):
    bench = make_bench(tmp_path, data, mlp_layers)
    recipe = recipe_from({"method": "optimum", **settings})
    path = bench.quantize(recipe, tmp_path / "optimum.onnx")
    assert not list(bench.work_dir.glob("optimum-*"))  # optimum's folder (its ort_config.json) is gone
    weights = _matmul_integer_weights(path)
    assert len(weights) == 3 and {w.dtype for w, _ in weights} == {np.dtype(dtype)}
    assert all((zero_points.size > 1) is per_channel for _, zero_points in weights)
    if dtype == np.int8:
        biggest = max(int(np.abs(w.astype(np.int32)).max()) for w, _ in weights)
        assert biggest <= 64 if seven_bit else biggest == 127
    accuracy, _ = bench.evaluate(path)
    assert accuracy >= bench.float_val_accuracy - 0.05


@pytest.mark.parametrize("proxy", ["accuracy", "output_error"])
def test_sensitivity_ranks_the_fragile_layer_first(tmp_path, data, mlp_layers, proxy):
    bench = make_bench(tmp_path, data, make_fragile(mlp_layers, data, ("fc2",)))
    assert bench.float_val_accuracy > 0.8  # the float model still works
    rows = rank_sensitivity(bench, StaticInt8(per_channel=False), proxy)
    assert rows[0]["node"] == "fc2"
    assert [r["rank"] for r in rows] == [1, 2, 3]
    if proxy == "accuracy":
        assert rows[0]["accuracy_drop"] > 0.3 and all(r["accuracy_drop"] < 0.1 for r in rows[1:])
    else:
        assert rows[0]["output_mse"] > 10 * rows[1]["output_mse"]
    assert sorted(p.name for p in bench.work_dir.glob("trial*")) == []  # per-node trials are deleted


def test_layer_sqnr_finds_the_fragile_layer_in_one_pass(tmp_path, data, mlp_layers):
    bench = make_bench(tmp_path, data, make_fragile(mlp_layers, data, ("fc2",)))
    quantized = bench.quantize(StaticInt8(per_channel=False), tmp_path / "q.onnx")
    rows = layer_sqnr(bench, quantized)
    assert rows[0]["node"] == "fc2" and [r["rank"] for r in rows] == [1, 2, 3]
    fc2 = rows[0]
    assert fc2["sqnr_drop_db"] > 10 and fc2["sqnr_db"] < min(r["sqnr_db"] for r in rows if r["node"] == "fc1")
    ranked = rank_sensitivity(bench, StaticInt8(per_channel=False), "sqnr")
    assert ranked[0]["node"] == "fc2" and ranked[0]["fp32"] is False


def test_mixed_precision_keeps_the_fragile_layer_fp32(tmp_path, data, mlp_layers):
    bench = make_bench(tmp_path, data, make_fragile(mlp_layers, data, ("fc2",)))
    recipe = StaticInt8()
    ranked = [r["node"] for r in rank_sensitivity(bench, recipe, "output_error")]
    result = search_mixed_precision(bench, recipe, ranked, max_accuracy_drop=0.05, max_fp32_nodes=3)
    assert result.budget_met and result.best.fp32_nodes == ["fc2"]
    assert [t.fp32_nodes for t in result.trials] == [[], ["fc2"]]
    assert result.trials[0].accuracy_drop > 0.3


def test_mixed_precision_impossible_budget_keeps_the_best(tmp_path, data, mlp_layers):
    bench = make_bench(tmp_path, data, make_fragile(mlp_layers, data, ("fc1", "fc2")))
    recipe = StaticInt8()
    ranked = [r["node"] for r in rank_sensitivity(bench, recipe, "accuracy")]
    assert set(ranked[:2]) == {"fc1", "fc2"}
    result = search_mixed_precision(bench, recipe, ranked, max_accuracy_drop=0.05, max_fp32_nodes=1)
    assert not result.budget_met
    assert len(result.trials) == 2
    assert result.best.val_accuracy == max(t.val_accuracy for t in result.trials)
    # the user's own FP32 nodes do not count against max_fp32_nodes
    result = search_mixed_precision(bench, recipe, ranked, max_accuracy_drop=0.05, max_fp32_nodes=1, exclude=["fc1"])
    assert result.budget_met and result.best.fp32_nodes == ["fc2"]


def _candidate(name: str, drop: float, p50: float) -> Candidate:
    return Candidate(name, StaticInt8(), 0.9 - drop, drop, p50, 1000, Path(name))


def test_choose_candidate_rule():
    fast_but_bad = _candidate("a", 0.10, 0.5)
    ok_slow = _candidate("b", 0.00, 2.0)
    ok_fast = _candidate("c", 0.01, 1.0)
    best, within = choose_candidate([fast_but_bad, ok_slow, ok_fast], max_accuracy_drop=0.01)
    assert best is ok_fast and within and ok_fast.chosen and not ok_slow.chosen
    best, within = choose_candidate([fast_but_bad, ok_slow, ok_fast], max_accuracy_drop=0.0)
    assert best is ok_slow and within
    worse = _candidate("d", 0.2, 0.1)
    best, within = choose_candidate([fast_but_bad, worse], max_accuracy_drop=0.01)
    assert best is fast_but_bad and not within  # none within: the most accurate


def test_ort_optimize_fuses_qdq_and_keeps_outputs(tmp_path, data, mlp_layers):
    bench = make_bench(tmp_path, data, mlp_layers)
    qdq = bench.quantize(StaticInt8(), tmp_path / "qdq.onnx")
    fused = ort_optimize(qdq, tmp_path / "fused.onnx")
    ops = {n.op_type for n in onnx.load(str(fused)).graph.node}
    assert "QGemm" in ops and "Gemm" not in ops
    x = data.test.tensors[0]
    np.testing.assert_allclose(onnx_logits(fused, x), onnx_logits(qdq, x), atol=1e-5)
    assert quantized_weight_count(onnx.load(str(fused))) == 3


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_excluded_node_stays_fp32_inside_onnx_runtime(tmp_path, data, mlp_layers, fmt):
    """ORT's WeightBiasQuantization transformer quantizes any float Gemm/Conv fed by a DequantizeLinear
    when the session starts; an excluded node must survive it (here: fc2 is fragile, fc1 quantized)."""
    bench = make_bench(tmp_path, data, make_fragile(mlp_layers, data, ("fc2",)))
    path = bench.quantize(StaticInt8(format=fmt), tmp_path / "mixed.onnx", exclude=["fc2"])
    accuracy, _ = bench.evaluate(path)  # a default session: every graph optimization on
    assert accuracy >= bench.float_val_accuracy - 0.05
    optimized = onnx.load(str(ort_optimize(path, tmp_path / "optimized.onnx")))
    fc2 = next(n for n in optimized.graph.node if n.name == "fc2")
    assert fc2.op_type == "Gemm" and fc2.input[1] in {t.name for t in optimized.graph.initializer}
