"""The ``quantize`` stage end to end on small real models: tiny_cnn and an MLP trained on digits,
both exported with the pipeline's own dynamo exporter (so Linear layers arrive as ``Gemm``)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.utils.data import TensorDataset

from edgeslim.api import parse_config
from edgeslim.data.datasets import DataSplits
from edgeslim.engine.stage import StageResult
from edgeslim.engine.store import ONNX, ONNX_INT8, Artifact
from edgeslim.errors import UserError
from edgeslim.export.onnx_io import export_onnx, onnx_logits
from edgeslim.quant.methods import recipe_from
from edgeslim.stages.quantize import Quantize
from edgeslim.train.loop import TrainLoopConfig, fit
from tests.conftest import make_context, plan_for, small_config, stage_for

FAST_AUTO = {"warmup": 2, "runs": 10, "max_seconds": 0.5}


def run_quantize(tmp_path: Path, data, loader, artifact: Artifact, **settings) -> StageResult:
    """Run the stage; INT8 mechanics are tested with ``never_slower`` off, because on these tiny
    models INT8 is slower than float and the stage (rightly) ships float (tested on its own below)."""
    settings.setdefault("never_slower", False)
    stages = [{"quantize": settings}]
    return stage_for(stages).execute(make_context(tmp_path, data, loader, artifact, stages))


def accuracy_on_test_split(path: Path, data: DataSplits) -> float:
    """What the report would show; the stage itself never reads the test split."""
    x, y = data.test.tensors
    return float((onnx_logits(path, x).argmax(1) == y.numpy()).mean())


def onnx_artifact_of(model: nn.Module, data: DataSplits, directory: Path) -> Artifact:
    directory.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), data.example_batch(2), directory / "model.onnx")
    artifact = Artifact(ONNX, directory, {"files": {"model": "model.onnx"}, "params": None, "macs": None})
    artifact.save()
    return artifact


def only_model_left(result: StageResult) -> None:
    """Intermediate files (preprocessed models, trials, calibration caches) are gone."""
    assert sorted(p.name for p in result.artifact.directory.iterdir()) == ["artifact.json", "model.onnx"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data, loader, trained) -> Artifact:
    """tiny_cnn (two Conv layers, a Gemm head) through the export stage."""
    tmp = tmp_path_factory.mktemp("export")
    return stage_for(["export"]).execute(make_context(tmp, data, loader, trained, ["export"])).artifact


@pytest.fixture(scope="module")
def mlp(data) -> nn.Sequential:
    """A Linear-heavy 64-128-128-10 MLP trained on the digits slice (about 90% test accuracy)."""
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    cfg = TrainLoopConfig(epochs=15, batch_size=32, optimizer={"lr": 0.003}, patience=None)
    fit(model, data.train, data.val, cfg, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory, data, mlp) -> Artifact:
    return onnx_artifact_of(mlp, data, tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def fragile_onnx(tmp_path_factory, data, mlp) -> Artifact:
    """The MLP with a fragile middle layer: hidden units 0, 32, 64 and 96 of the first layer are made
    dead (always 0 after ReLU) and the middle layer gets huge weights from them. The float model only
    loses those 4 of 128 units; the middle layer's INT8 weight scales (per-tensor or per-channel) and
    its INT4 block scales (one dead unit in every block of 32 inputs) are set by the huge weights, so
    all its other weights round to zero. The other layers are unaffected."""
    model = copy.deepcopy(mlp)
    first, middle = model[1], model[3]
    dead = list(range(0, first.out_features, 32))
    with torch.no_grad():
        first.weight[dead] = 0.0
        first.bias[dead] = -1.0
        signs = torch.where(torch.arange(middle.out_features) % 2 == 0, 1.0, -1.0)
        middle.weight[:, dead] = 1000 * middle.weight.abs().max() * signs[:, None]
    return onnx_artifact_of(model, data, tmp_path_factory.mktemp("fragile"))


def gemm_names(artifact: Artifact) -> list[str]:
    return [n.name for n in onnx.load(str(artifact.file("model"))).graph.node if n.op_type == "Gemm"]


# ---------------------------------------------------------------- static


def test_static_int8_quantization(tmp_path, data, loader, exported):
    result = run_quantize(tmp_path, data, loader, exported, calibration_samples=64)
    assert result.artifact.kind == ONNX_INT8
    path = result.artifact.file("model")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.int8]
    assert any(t.dims and t.dims[0] == 32 for t in int8_weights)  # the second conv's weights are int8
    x = data.test.tensors[0]
    q = onnx_logits(path, x).argmax(1)
    f = onnx_logits(exported.file("model"), x).argmax(1)
    assert (q == f).mean() > 0.9
    assert result.details["quantized_weights"] == 3 and result.details["fp32_nodes"] == []
    assert result.details["val_accuracy_drop"] < 0.1
    only_model_left(result)


def weight_scale(model: onnx.ModelProto, node_op: str) -> list[np.ndarray]:
    """The scale tensors of the DequantizeLinear nodes feeding each ``node_op``'s weight input."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    return [inits[producers[n.input[1]].input[1]] for n in model.graph.node if n.op_type == node_op]


def test_per_channel_vs_per_tensor_weight_scales(tmp_path, data, loader, exported):
    per_channel = run_quantize(tmp_path / "pc", data, loader, exported, calibration_samples=64)
    per_tensor = run_quantize(tmp_path / "pt", data, loader, exported, calibration_samples=64, per_channel=False)
    channel_scales = weight_scale(onnx.load(str(per_channel.artifact.file("model"))), "Conv")
    tensor_scales = weight_scale(onnx.load(str(per_tensor.artifact.file("model"))), "Conv")
    assert [s.shape for s in channel_scales] == [(16,), (32,)]  # one per output channel
    assert [s.shape for s in tensor_scales] == [(), ()]  # one scalar per tensor
    for result in (per_channel, per_tensor):
        assert accuracy_on_test_split(result.artifact.file("model"), data) > 0.7


def activation_zero_point_dtypes(model: onnx.ModelProto) -> set[np.dtype]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_s8s8_vs_u8s8_activation_zero_points(tmp_path, data, loader, exported):
    u8s8 = run_quantize(tmp_path / "u", data, loader, exported, calibration_samples=64)
    s8s8 = run_quantize(tmp_path / "s", data, loader, exported, calibration_samples=64, scheme="s8s8")
    assert activation_zero_point_dtypes(onnx.load(str(u8s8.artifact.file("model")))) == {np.dtype(np.uint8)}
    assert activation_zero_point_dtypes(onnx.load(str(s8s8.artifact.file("model")))) == {np.dtype(np.int8)}
    assert s8s8.details["recipe"]["activation_type"] == "int8"
    assert accuracy_on_test_split(s8s8.artifact.file("model"), data) > 0.7


@pytest.mark.parametrize(
    "settings, expected_ops",
    [
        ({"calibration": "entropy"}, {"QuantizeLinear"}),
        ({"calibration": "percentile", "percentile": 99.9}, {"QuantizeLinear"}),
        ({"format": "qoperator"}, {"QLinearConv"}),
        ({"optimize": "after"}, {"QLinearConv", "QGemm"}),  # ORT's fused graph saved as the artifact
        ({"preprocess": False}, {"QuantizeLinear"}),  # the old key still works: optimize: none
    ],
)
def test_static_variants_run_and_stay_accurate(tmp_path, data, loader, exported, settings, expected_ops):
    result = run_quantize(tmp_path, data, loader, exported, calibration_samples=64, **settings)
    path = result.artifact.file("model")
    assert expected_ops <= {n.op_type for n in onnx.load(str(path)).graph.node}
    assert accuracy_on_test_split(path, data) > accuracy_on_test_split(exported.file("model"), data) - 0.1
    only_model_left(result)


# ---------------------------------------------------------------- dynamic and int4


def test_dynamic_on_mlp(tmp_path, data, loader, mlp_onnx):
    result = run_quantize(tmp_path, data, loader, mlp_onnx, method="dynamic")
    path = result.artifact.file("model")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    assert result.details["quantized_weights"] == 3
    assert not any("warning" in n for n in result.notes)
    assert accuracy_on_test_split(path, data) > accuracy_on_test_split(mlp_onnx.file("model"), data) - 0.05
    assert path.stat().st_size < mlp_onnx.file("model").stat().st_size / 2.5


def test_dynamic_on_conv_model_warns(tmp_path, data, loader, exported):
    result = run_quantize(tmp_path, data, loader, exported, method="dynamic")
    warning = next(n for n in result.notes if n.startswith("warning:"))
    assert "2 Conv layers" in warning and "ConvInteger" in warning and "slower" in warning
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(result.artifact.file("model"))).graph.node}
    assert accuracy_on_test_split(result.artifact.file("model"), data) > 0.7


def test_int4_matmulnbits_on_mlp(tmp_path, data, loader, mlp_onnx):
    result = run_quantize(tmp_path, data, loader, mlp_onnx, method="int4", block_size=16, symmetric=True)
    path = result.artifact.file("model")
    nbits = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 3  # every Linear, although the exporter wrote Gemm
    assert {onnx.helper.get_attribute_value(a) for n in nbits for a in n.attribute if a.name == "block_size"} == {16}
    assert any("3 of 3 MatMul weights quantized to MatMulNBits" in n for n in result.notes)
    assert accuracy_on_test_split(path, data) > accuracy_on_test_split(mlp_onnx.file("model"), data) - 0.05
    assert path.stat().st_size < mlp_onnx.file("model").stat().st_size / 4


def test_int4_refuses_a_conv_only_model(tmp_path, data, loader):
    conv_only = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    artifact = onnx_artifact_of(conv_only, data, tmp_path / "in")
    with pytest.raises(UserError, match=r"^stages\[0\]\.quantize\.method: int4 .*has none") as err:
        run_quantize(tmp_path, data, loader, artifact, method="int4")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- optimum


def test_optimum_on_mlp_is_another_quantized_model(tmp_path, data, loader, mlp_onnx):
    result = run_quantize(tmp_path, data, loader, mlp_onnx, method="optimum", optimum_preset="avx512", per_channel=True)
    path = result.artifact.file("model")
    assert result.artifact.kind == ONNX_INT8 and result.details["deliverable"] == "int8"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "Gemm" not in ops
    assert result.details["quantized_weights"] == 3 and result.details["int8_coverage"]["integer_fraction"] == 1
    recipe = result.details["recipe"]
    assert recipe["method"] == "optimum" and recipe["optimum_preset"] == "avx512" and recipe["per_channel"] is True
    assert result.notes[0].startswith("optimum ORTQuantizer avx512 dynamic per-channel u8s8")
    assert accuracy_on_test_split(path, data) > accuracy_on_test_split(mlp_onnx.file("model"), data) - 0.05
    only_model_left(result)
    safer = stage_for([{"quantize": {"method": "optimum", "optimum_preset": "avx512"}}]).fallback(
        1, StageResult(result.artifact, details={**result.details, "recipe": {**recipe, "reduce_range": False}})
    )
    assert safer is not None and (safer.config.method, safer.config.optimum_preset) == ("optimum", "avx512")
    assert safer.config.exclude_most_sensitive == 2 and safer.config.recipe() == recipe_from(
        {**recipe, "reduce_range": False}
    )


def test_optimum_missing_is_one_line_at_plan_and_run_time(tmp_path, data, loader, mlp_onnx, monkeypatch):
    from edgeslim.stages import quantize as stage_module

    versions = plan_for([{"quantize": {"method": "optimum"}}], ONNX).key_parts["optimum"]
    assert set(versions) == {"optimum", "optimum-onnx"}  # another optimum, another model
    monkeypatch.setattr(stage_module, "optimum_installed", lambda: False)
    with pytest.raises(UserError, match=r"^stages\[0\]\.quantize\.method: optimum needs Hugging Face optimum"):
        plan_for([{"quantize": {"method": "optimum"}}], ONNX)
    monkeypatch.setattr(stage_module, "optimum_missing", lambda: "optimum's ORTQuantizer is not importable (x)")
    with pytest.raises(UserError, match=r"^stages\[0\]\.quantize\.method: optimum: optimum's ORTQuantizer") as err:
        run_quantize(tmp_path, data, loader, mlp_onnx, method="optimum")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- sensitivity and mixed precision


def test_mixed_precision_keeps_the_fragile_layer_fp32(tmp_path, data, loader, fragile_onnx):
    fc1, fc2, fc3 = gemm_names(fragile_onnx)
    result = run_quantize(
        tmp_path, data, loader, fragile_onnx, per_channel=False, mixed_precision={"max_accuracy_drop": 0.05}
    )
    table = result.details["sensitivity"]
    assert table[0]["node"] == fc2 and table[0]["accuracy_drop"] > 0.3
    assert {r["node"] for r in table} == {fc1, fc2, fc3}
    assert [r["fp32"] for r in table] == [True, False, False]
    assert result.details["budget_met"] is True and result.details["fp32_nodes"] == [fc2]
    assert result.details["val_accuracy_drop"] <= 0.05
    assert any(f"1 node(s) FP32 ({fc2}) meets" in n for n in result.notes)
    assert accuracy_on_test_split(result.artifact.file("model"), data) > 0.8  # the kept FP32 layer works in ORT
    assert result.details["quantized_weights"] == 2
    only_model_left(result)


def test_mixed_precision_impossible_budget_keeps_the_best(tmp_path, data, loader, fragile_onnx):
    result = run_quantize(
        tmp_path,
        data,
        loader,
        fragile_onnx,
        mixed_precision={"max_accuracy_drop": 0.05, "proxy": "output_error", "max_fp32_nodes": 0},
    )
    assert result.details["budget_met"] is False  # reported, not raised: the accuracy guard decides
    assert any("NOT met" in n for n in result.notes)
    trials = result.details["mixed_precision"]["trials"]
    assert result.details["val_accuracy"] == max(t["val_accuracy"] for t in trials)
    assert result.details["sensitivity"][0]["node"] == gemm_names(fragile_onnx)[1]


def test_seeded_and_blind_to_the_test_split(tmp_path, data, loader, fragile_onnx):
    """Same seed, same bytes; and garbage in the test split changes nothing (it is never read)."""
    settings = {"calibration_samples": 64, "mixed_precision": {"max_accuracy_drop": 0.05}}
    first = run_quantize(tmp_path / "a", data, loader, fragile_onnx, **settings)
    x, y = data.test.tensors
    poisoned = dataclasses.replace(data, test=TensorDataset(torch.full_like(x, float("nan")), y))
    second = run_quantize(tmp_path / "b", poisoned, loader, fragile_onnx, **settings)

    def digest(result: StageResult) -> str:
        return hashlib.sha256(result.artifact.file("model").read_bytes()).hexdigest()

    assert digest(first) == digest(second)
    assert first.details["sensitivity"] == second.details["sensitivity"]


# ---------------------------------------------------------------- auto


def test_auto_picks_the_fastest_within_budget(tmp_path, data, loader, mlp_onnx):
    result = run_quantize(
        tmp_path, data, loader, mlp_onnx, method="auto", auto={**FAST_AUTO, "max_accuracy_drop": 0.05}
    )
    table = result.details["candidates"]
    names = {c["name"] for c in table}
    assert {"static-u8s8-minmax", "static-per-tensor", "static-entropy", "static-s8s8", "dynamic", "int4"} <= names
    for c in table:
        assert c["p50_ms"] > 0 and c["size_bytes"] > 0 and 0 <= c["val_accuracy"] <= 1
    chosen = [c for c in table if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["name"] == result.details["chosen"]
    within = [c for c in table if c["accuracy_drop"] <= 0.05 + 1e-9]
    # The rule, not a particular winner (latencies are noisy): the fastest within budget, keeping
    # float (drop 0) included, so the budget is always met by something.
    assert chosen[0]["p50_ms"] == min(c["p50_ms"] for c in within)
    assert result.details["budget_met"] is any(c["name"] != "keep-float" for c in within)
    if chosen[0]["name"] == "keep-float":
        assert result.details["recipe"] is None and result.details["deliverable"] == "float"
    else:
        assert result.details["recipe"] == chosen[0]["settings"] and result.details["deliverable"] == "int8"
    assert result.details["float"]["p50_ms"] > 0
    assert any(n.startswith(f"auto: {chosen[0]['name']} ") for n in result.notes)
    assert accuracy_on_test_split(result.artifact.file("model"), data) > 0.7
    only_model_left(result)


def test_auto_keeps_sensitive_nodes_fp32_when_no_candidate_is_within_budget(tmp_path, data, loader, fragile_onnx):
    fc2 = gemm_names(fragile_onnx)[1]
    result = run_quantize(
        tmp_path,
        data,
        loader,
        fragile_onnx,
        method="auto",
        auto={**FAST_AUTO, "max_accuracy_drop": 0.05},
        mixed_precision={"proxy": "output_error", "max_fp32_nodes": 2},
    )
    table = result.details["candidates"]
    plain = [c for c in table if not c["name"].endswith("+fp32") and c["name"] != "keep-float"]
    assert all(c["accuracy_drop"] > 0.05 for c in plain)  # every plain candidate breaks the fragile layer
    mixed = next(c for c in table if c["name"].endswith("+fp32"))
    assert mixed["fp32_nodes"] == [fc2] and mixed["accuracy_drop"] <= 0.05
    assert result.details["budget_met"] is True
    # keeping float (drop 0) is a candidate too: the faster of the two within budget ships
    within = [c for c in table if c["error"] is None and c["accuracy_drop"] <= 0.05]
    assert {c["name"] for c in within} == {mixed["name"], "keep-float"}
    assert result.details["chosen"] == min(within, key=lambda c: c["p50_ms"])["name"]
    top = result.details["sensitivity"][0]
    assert top["node"] == fc2 and top["fp32"] is (result.details["chosen"] == mixed["name"])


def test_auto_on_conv_model_skips_dynamic_and_int4(tmp_path, data, loader, exported):
    result = run_quantize(tmp_path, data, loader, exported, method="auto", calibration_samples=64, auto=FAST_AUTO)
    names = {c["name"] for c in result.details["candidates"]}
    assert "dynamic" not in names and "int4" not in names
    assert {"static-u8s8-minmax", "static-per-tensor"} <= names


# ---------------------------------------------------------------- accuracy-guard fallback


def test_fallback_keeps_the_most_sensitive_nodes_fp32(tmp_path, data, loader, fragile_onnx):
    fc1, fc2, fc3 = gemm_names(fragile_onnx)
    settings = {
        "never_slower": False,
        "reduce_range": False,  # node by node from the first fallback (auto's 7-bit step: below)
        "fallback_nodes_per_attempt": 1,
        "mixed_precision": {"max_accuracy_drop": 0.05, "proxy": "output_error", "max_fp32_nodes": 0},
    }
    stages = [{"quantize": settings}]
    stage = stage_for(stages)
    first = stage.execute(make_context(tmp_path / "0", data, loader, fragile_onnx, stages))
    assert first.details["budget_met"] is False and first.details["fp32_nodes"] == []

    safer = stage.fallback(1, first)
    assert isinstance(safer, Quantize)
    assert safer.config.exclude_nodes == [fc2] and safer.config.mixed_precision is None
    second = safer.execute(make_context(tmp_path / "1", data, loader, fragile_onnx, stages))
    assert second.details["fp32_nodes"] == [fc2]
    assert second.details["val_accuracy"] > first.details["val_accuracy"] + 0.3
    assert second.details["sensitivity"][0] == {**first.details["sensitivity"][0], "fp32": True}  # handed on

    third = stage.fallback(2, second)
    assert third is not None and len(third.config.exclude_nodes) == 2 and third.config.exclude_nodes[0] == fc2
    everything = StageResult(second.artifact, details={**second.details, "fp32_nodes": [fc1, fc2, fc3]})
    assert stage.fallback(3, everything) is None
    assert stage.fallback(3, second) is None  # every node FP32 is the float model plus Q/DQ: keep float instead


def test_fallback_without_a_sensitivity_table_ranks_in_the_new_run(tmp_path, data, loader, fragile_onnx):
    fc2 = gemm_names(fragile_onnx)[1]
    stages = [{"quantize": {"calibration_samples": 64, "never_slower": False, "reduce_range": False}}]
    stage = stage_for(stages)
    plain = stage.execute(make_context(tmp_path / "0", data, loader, fragile_onnx, stages))
    assert "sensitivity" not in plain.details
    safer = stage.fallback(1, plain)
    assert safer is not None and safer.config.exclude_most_sensitive == 2 and safer.config.exclude_nodes == []
    result = safer.execute(make_context(tmp_path / "1", data, loader, fragile_onnx, stages))
    assert result.details["sensitivity"][0]["node"] == fc2 and fc2 in result.details["fp32_nodes"]
    assert len(result.details["fp32_nodes"]) == 2


def test_the_first_fallback_from_auto_7_bit_weights_is_8_bit_weights(tmp_path, data, loader, fragile_onnx):
    """7-bit weights (reduce_range: auto, on x86 without VNNI) cost a little accuracy: when the guard
    breaches, 8-bit weights (ONNX Runtime's exact mode) come before keeping any node FP32."""
    stage = stage_for([{"quantize": {"never_slower": False, "fallback_nodes_per_attempt": 1}}])
    previous = StageResult(
        fragile_onnx,
        details={
            "recipe": {"method": "static", "reduce_range": True},
            "fp32_nodes": [],
            "quantizable_nodes": [{"node": n, "op_type": "Gemm"} for n in gemm_names(fragile_onnx)],
        },
    )
    eight_bit = stage.fallback(1, previous)
    assert eight_bit is not None and eight_bit.config.reduce_range is False and eight_bit.config.exclude_nodes == []
    previous.details["recipe"]["reduce_range"] = False  # then node by node, with 8-bit weights
    nodes = stage.fallback(2, previous)
    assert nodes is not None and nodes.config.reduce_range is False and nodes.config.exclude_most_sensitive == 2


def test_fallback_pins_auto_to_its_winner(tmp_path, data, loader, mlp_onnx):
    stage = stage_for([{"quantize": {"method": "auto"}}])
    previous = StageResult(
        mlp_onnx,
        details={
            "recipe": {"method": "dynamic", "per_channel": True, "weight_type": "int8", "reduce_range": False},
            "fp32_nodes": [],
            "quantizable_nodes": [{"node": n, "op_type": "Gemm"} for n in gemm_names(mlp_onnx)],
        },
    )
    safer = stage.fallback(1, previous)
    assert safer is not None and safer.config.method == "dynamic" and safer.config.exclude_most_sensitive == 2


# ---------------------------------------------------------------- configuration


def quantize_config(**settings):
    return parse_config(small_config([{"quantize": settings}])).stages[0].settings


def test_config_defaults_and_migration():
    cfg = quantize_config()
    assert (cfg.method, cfg.format, cfg.per_channel, cfg.activation_type, cfg.weight_type) == (
        "static",
        "qdq",
        True,
        "uint8",
        "int8",
    )
    assert cfg.optimize == "before" and cfg.mixed_precision is None and cfg.auto.max_accuracy_drop == 0.01
    assert quantize_config(preprocess=True).optimize == "before"
    assert quantize_config(preprocess=False).optimize == "none"
    s8 = quantize_config(scheme="s8s8")
    assert (s8.activation_type, s8.weight_type) == ("int8", "int8")
    assert quantize_config(mixed_precision={}).mixed_precision.max_fp32_nodes == 8


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"preprocess": True, "optimize": "after"}, r"quantize: preprocess is the old name of optimize"),
        ({"scheme": "s8s8", "activation_type": "uint8"}, r"scheme: s8s8 means activation_type: int8"),
        ({"method": "int4", "block_size": 48}, r"block_size: must be a power of two"),
        ({"method": "dynamic", "scheme": "s8s8"}, r"activation_type: dynamic quantization always uses uint8"),
        ({"percentile": 99.0}, r"percentile: only used with calibration: percentile"),
        ({"activation_type": "int8", "weight_type": "uint8"}, r"not supported by ONNX Runtime"),
        ({"method": "float16"}, r"quantize\.method: Input should be"),
        ({"method": "optimum", "optimum_preset": "avx9"}, r"quantize\.optimum_preset: Input should be 'avx512_vnni'"),
        ({"method": "optimum", "reduce_range": True}, r"reduce_range: optimum_preset: avx512_vnni always uses 8-bit"),
        ({"method": "optimum", "weight_type": "uint8"}, r"weight_type: method: optimum takes its weight type from"),
        ({"optimum_preset": "arm64"}, r"optimum_preset: only used with method: optimum"),
        ({"mixed_precision": {"proxy": "kl"}}, r"quantize\.mixed_precision\.proxy"),
        ({"calibrate": "minmax"}, r"quantize\.calibrate: unknown key; allowed keys: backend, inc, method, format"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(settings, message):
    with pytest.raises(UserError, match=r"^stages\[0\]\.quantize") as err:
        quantize_config(**settings)
    assert "\n" not in str(err.value)
    assert re.search(message, str(err.value))


def test_unknown_exclude_node_is_refused(tmp_path, data, loader, exported):
    with pytest.raises(UserError, match=r"^stages\[0\]\.quantize\.exclude_nodes: no quantizable node named 'conv9'"):
        run_quantize(tmp_path, data, loader, exported, exclude_nodes=["conv9"])


def test_timing_driven_choices_are_keyed_by_the_host_profile():
    """never_slower and auto decide by timing on the host profile: another profile is another result."""
    assert "host" in plan_for(["quantize"], ONNX).key_parts
    assert "host" in plan_for([{"quantize": {"method": "auto", "never_slower": False}}], ONNX).key_parts
    assert "host" not in plan_for([{"quantize": {"never_slower": False}}], ONNX).key_parts


def test_refuses_an_int8_input():
    with pytest.raises(UserError, match="already INT8"):
        plan_for(["quantize"], ONNX_INT8)


# ---------------------------------------------------------------- never slower, never silently worse


def test_keeps_the_float_model_when_int8_is_slower(tmp_path, data, loader, exported):
    """tiny_cnn on 8x8 digits: two small convs, where converting to and from INT8 costs more than
    the integer kernels save (measured 0.68x [0.67-0.68] here). The float input ships, and says why."""
    result = run_quantize(tmp_path, data, loader, exported, calibration_samples=64, never_slower=True)
    check = result.details["latency_check"]
    assert check["verdict"] == "slower" and check["speedup_interval"][1] < 1
    assert result.artifact.kind == ONNX and result.details["deliverable"] == "float"
    assert result.details["rejected_int8"]["recipe"]["method"] == "static"
    assert any(n.startswith("kept the float model: INT8 ran") for n in result.notes)
    rejected = result.details["rejected_int8"]  # which ops make INT8 lose, profiled by op type
    assert rejected["int8_op_ms"]["QLinearConv"] > 0 and "QLinearConv" not in rejected["float_op_ms"]
    assert rejected["int8_op_ms"]["QuantizeLinear"] > 0
    why = next(n for n in result.notes if n.startswith("per-op time (ONNX Runtime profiler"))
    assert "integer kernels" in why and "Q/DQ" in why and "float model" in why
    shipped = onnx.load(str(result.artifact.file("model")))
    assert (
        hashlib.sha256(shipped.SerializeToString()).digest()
        == hashlib.sha256(onnx.load(str(exported.file("model"))).SerializeToString()).digest()
    )  # the input, unchanged
    assert result.details["int8_coverage"]["is_int8"]  # the rejected INT8 model did run integer kernels
    only_model_left(result)


@pytest.mark.parametrize("int8_ms, ships", [(1.03, "float"), (0.97, "int8")])
def test_a_verdict_within_the_noise_is_measured_again_and_decided_by_the_median(
    tmp_path, data, loader, exported, monkeypatch, int8_ms, ships
):
    """Timing made noisy on purpose (wide, overlapping samples): the stage measures a second time and
    pools both; still within the noise, INT8 ships only when it is not slower at the median."""
    import numpy as np

    from edgeslim.stages import quantize as quantize_module

    calls: list[int] = []

    def noisy_timer(self, ctx, work_dir):
        def timer(paths):
            calls.append(len(paths))
            rng = np.random.default_rng(len(calls))
            float_ms = 1.0 + rng.normal(0, 0.4, 100)
            return [list(float_ms), list(float_ms - 1.0 + int8_ms + rng.normal(0, 0.01, 100))]

        return timer

    monkeypatch.setattr(quantize_module.Quantize, "_timer", noisy_timer)
    result = run_quantize(tmp_path, data, loader, exported, calibration_samples=64, never_slower=True)
    check = result.details["latency_check"]
    assert calls == [2, 2] and check["measurements"] == 2 and check["verdict"] == "within noise"
    assert result.details["deliverable"] == ships
    if ships == "float":
        assert any("not faster: slower at the median (two measurements pooled)" in n for n in result.notes)


class WideCNN(nn.Module):
    """Wide enough that INT8 kernels pay on 8x8 inputs (random weights: only timing matters here)."""

    def __init__(self) -> None:
        super().__init__()
        layers, c_in = [], 1
        for c in (64, 128, 128):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_ships_int8_when_it_is_faster(tmp_path, data, loader):
    torch.manual_seed(0)
    artifact = onnx_artifact_of(WideCNN(), data, tmp_path / "wide")
    result = run_quantize(tmp_path / "q", data, loader, artifact, calibration_samples=64, never_slower=True)
    check = result.details["latency_check"]
    assert check["verdict"] == "faster" and check["speedup_interval"][0] > 1
    assert result.artifact.kind == ONNX_INT8 and result.details["deliverable"] == "int8"
    assert result.details["int8_coverage"]["integer"] == {"conv": 3, "linear": 1}
    assert any("INT8 coverage: 3/3 convs, 1/1 linears" in n for n in result.notes)


def test_seven_bit_weights_where_the_fast_int8_kernels_saturate(tmp_path, data, loader, exported):
    """reduce_range: auto gives 7-bit weights on x86 without VNNI: exact on ONNX Runtime's default
    U8S8 kernels, so the model is judged and timed on those, not on the slower exact mode."""
    from edgeslim.devices import edgeslim_bench
    from edgeslim.export.onnx_io import int8_can_saturate, needs_exact_int8

    result = run_quantize(tmp_path, data, loader, exported, calibration_samples=64)
    saturates = edgeslim_bench.u8s8_saturates()
    assert result.details["recipe"]["reduce_range"] is saturates
    model = onnx.load(str(result.artifact.file("model")))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights and (max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64) is saturates
    assert int8_can_saturate(result.artifact.file("model")) is not saturates
    assert not needs_exact_int8(result.artifact.file("model"))  # timed on the default kernels, exact here
    assert any("7-bit weights (reduce_range: auto)" in n for n in result.notes) is saturates
    pinned = run_quantize(tmp_path / "8bit", data, loader, exported, calibration_samples=64, reduce_range=False)
    assert pinned.details["recipe"]["reduce_range"] is False and int8_can_saturate(pinned.artifact.file("model"))
    assert needs_exact_int8(pinned.artifact.file("model")) is saturates  # the exact mode only where it matters
    assert "u8s8_saturates" in plan_for(["quantize"], ONNX).key_parts
    assert "u8s8_saturates" not in plan_for([{"quantize": {"reduce_range": False}}], ONNX).key_parts


def test_auto_always_considers_keeping_float_and_skips_a_failing_candidate(
    tmp_path, data, loader, exported, monkeypatch
):
    from edgeslim.quant.ort import QuantBench

    original = QuantBench.quantize

    def entropy_fails(self, recipe, out, exclude=(), only=None):
        if getattr(recipe, "calibration", None) == "entropy":
            raise ValueError("Too many bins for data range")  # what ORT's entropy calibrator raised on a transformer
        return original(self, recipe, out, exclude, only)

    monkeypatch.setattr(QuantBench, "quantize", entropy_fails)
    result = run_quantize(tmp_path, data, loader, exported, method="auto", calibration_samples=64, auto=FAST_AUTO)
    table = {c["name"]: c for c in result.details["candidates"]}
    assert table["static-entropy"]["error"] == "ValueError: Too many bins for data range"
    assert table["static-entropy"]["chosen"] is False and table["static-entropy"]["p50_ms"] is None
    assert table["keep-float"]["accuracy_drop"] == 0 and table["keep-float"]["p50_ms"] > 0
    timed = [c for c in table.values() if c["error"] is None]
    assert all(c["p50_ms"] > 0 and c["speedup_vs_float"] for c in timed)
    within = [c for c in timed if c["accuracy_drop"] <= 0.01 + 1e-9]
    assert result.details["chosen"] == min(within, key=lambda c: c["p50_ms"])["name"]
    assert any("candidate static-entropy failed and was skipped: ValueError" in n for n in result.notes)
    assert result.artifact.kind == (ONNX if result.details["chosen"] == "keep-float" else ONNX_INT8)


def test_auto_times_float_regions_for_latency_aware_mixed_precision(tmp_path, data, loader):
    """MobileNetV3 (depthwise convs, hard-swish, squeeze-excitation gates): auto also tries the static
    candidate with its depthwise convs in float, and with the convs around ops that have no integer
    kernel in float; each is timed beside the others, so a region stays INT8 only where that is faster."""
    from edgeslim.models.zoo import build_model
    from edgeslim.quant.graph import float_regions

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", {"width_mult": 0.25}, in_channels=1, num_classes=10)
    artifact = onnx_artifact_of(model, data, tmp_path / "mnv3")
    regions = float_regions(onnx.load(str(artifact.file("model"))), ("Conv", "MatMul", "Gemm"))
    assert len(regions["depthwise"]) >= 10 and regions["near-float-ops"]  # SE gates: Conv -> HardSigmoid
    result = run_quantize(tmp_path / "q", data, loader, artifact, method="auto", calibration_samples=64, auto=FAST_AUTO)
    table = {c["name"]: c for c in result.details["candidates"]}
    for region in ("depthwise", "near-float-ops"):
        row = next(c for name, c in table.items() if name.endswith(f"+{region}-fp32"))
        assert row["error"] is None and row["p50_ms"] > 0 and row["fp32_nodes"]
    depthwise = next(c for name, c in table.items() if name.endswith("+depthwise-fp32"))
    assert len(depthwise["fp32_nodes"]) == len(regions["depthwise"])  # (node names: the bench's preprocessed copy)
    timed = [c for c in table.values() if c["error"] is None]
    within = [c for c in timed if c["accuracy_drop"] <= 0.01 + 1e-9]
    assert result.details["chosen"] == min(within, key=lambda c: c["p50_ms"])["name"]


def opset11_artifact(tmp_path: Path, data, loader) -> Artifact:
    """tiny_cnn written by the legacy TorchScript exporter at opset 11, as older toolchains ship models."""
    import warnings

    torch.manual_seed(0)
    model = loader.build().eval()
    fit(model, data.train, data.val, TrainLoopConfig(epochs=4, batch_size=32, optimizer={"lr": 0.01}), seed=0)
    directory = tmp_path / "opset11"
    directory.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (data.example_batch(2),),
            str(directory / "model.onnx"),
            dynamo=False,
            opset_version=11,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    assert onnx.load(str(directory / "model.onnx")).opset_import[0].version == 11
    artifact = Artifact(ONNX, directory, {"files": {"model": "model.onnx"}, "params": None, "macs": None})
    artifact.save()
    return artifact


def test_an_opset_11_model_is_upgraded_then_quantized_per_channel(tmp_path, data, loader):
    artifact = opset11_artifact(tmp_path, data, loader)
    result = run_quantize(tmp_path / "q", data, loader, artifact, calibration_samples=64)
    assert any("upgraded the model from opset 11 to 13" in n for n in result.notes)
    model = onnx.load(str(result.artifact.file("model")))
    axes = [a.i for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes  # per-channel weights
    assert result.details["val_accuracy_drop"] < 0.05


def test_an_opset_11_model_that_cannot_be_upgraded_is_quantized_per_tensor(tmp_path, data, loader, monkeypatch):
    from edgeslim.quant import ort as ort_module

    monkeypatch.setattr(ort_module, "upgrade_opset", lambda model, opset: None)
    artifact = opset11_artifact(tmp_path, data, loader)
    result = run_quantize(tmp_path / "q", data, loader, artifact, calibration_samples=64)
    assert any("weights quantized per-tensor" in n for n in result.notes)
    model = onnx.load(str(result.artifact.file("model")))
    assert model.opset_import[0].version == 11 or all(o.version <= 11 for o in model.opset_import if o.domain == "")
    assert not [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
    ]


def test_the_default_guard_is_one_point_vs_the_float_input():
    cfg = parse_config(small_config(["baseline", "export", "quantize"]))
    guard = cfg.stages[2].guard
    assert guard is not None and guard.max_accuracy_drop == 0.01 and guard.reference == "previous"
    assert (guard.on_breach, guard.on_exhausted) == ("fallback", "keep_previous")
    off = parse_config(small_config(["baseline", "export", {"quantize": {"guard": None}}]))
    assert off.stages[2].guard is None
    assert parse_config(off.to_plain()).stages[2].guard is None  # stays off when the config is written back
    own = parse_config(small_config(["baseline", "export", {"quantize": {"guard": {"max_accuracy_drop": 0.05}}}]))
    assert own.stages[2].guard.max_accuracy_drop == 0.05 and own.stages[2].guard.on_breach == "fail"
