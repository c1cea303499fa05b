from __future__ import annotations

import onnx
import pytest

from edgeslim.engine.store import ONNX
from edgeslim.errors import StageFailed
from tests.conftest import make_context, stage_for


def test_export_float_model_with_dynamic_batch_and_parity(tmp_path, data, loader, trained):
    result = stage_for(["export"]).execute(make_context(tmp_path, data, loader, trained, ["export"]))
    assert result.artifact.kind == ONNX
    path = result.artifact.file("model")
    model = onnx.load(str(path))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch axis
    assert not (path.parent / (path.name + ".data")).exists()  # weights inside the file
    parity = result.details["parity"]
    assert parity["top1_agreement"] == 1.0
    assert parity["max_abs_diff"] < 1e-4
    assert parity["samples"] == len(data.test)
    assert result.details["parity_ledger"] == [
        {
            **parity,
            "hop": "PyTorch -> ONNX FP32",
            "gate": 0.99,
            "passed": True,
            "first_divergent_node": None,
            "split": "test",
        }
    ]


def test_export_fails_clearly_below_agreement_threshold(tmp_path, data, loader, trained, monkeypatch):
    import edgeslim.stages.export as export_module

    real = export_module.onnx_logits
    monkeypatch.setattr(export_module, "onnx_logits", lambda *a, **k: -real(*a, **k))  # a broken runtime
    stages = [{"export": {"min_top1_agreement": 0.99}}]
    with pytest.raises(StageFailed, match=r"stages\[0\]\.export: ONNX and PyTorch agree on top-1 for only"):
        stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))


def test_qat_residual_se_block_exports_to_integer_kernels_within_the_parity_gate(tmp_path, data):
    """Residual add, depthwise conv, squeeze-excitation and a linear head through QAT and export: every
    conv and the head run in ONNX Runtime integer kernels, and the INT8 ONNX model agrees with the
    QAT PyTorch model at the default gate (0.99), hop by hop."""
    from edgeslim.config.schema import ModelSpec
    from edgeslim.engine.store import ONNX_INT8, TORCH
    from edgeslim.models.loader import ModelLoader, count_params_and_macs, save_torch_artifact
    from edgeslim.train.loop import TrainLoopConfig, fit

    spec = ModelSpec(name="tests.pipeline.quant.test_coverage:Blocks", kwargs={"activation": "relu"})
    loader = ModelLoader(spec, 1, 10, data.example_batch(2))
    model = loader.source_model()
    fit(model, data.train, data.val, TrainLoopConfig(epochs=4, batch_size=32, optimizer={"lr": 0.01}), seed=0)
    params, macs = count_params_and_macs(model, data.example_batch())
    (tmp_path / "trained").mkdir()
    trained = save_torch_artifact(tmp_path / "trained", model, kind=TORCH, pruning_history=[], params=params, macs=macs)
    stages = [{"finetune": {"epochs": 1, "batch_size": 32, "qat": True}}, "export"]
    qat = stage_for(stages).execute(make_context(tmp_path / "qat", data, loader, trained, stages))
    result = stage_for(stages, 1).execute(make_context(tmp_path / "export", data, loader, qat.artifact, stages, 1))
    assert result.artifact.kind == ONNX_INT8
    coverage = result.details["int8_coverage"]
    assert coverage["integer"] == {"conv": 8, "linear": 1} and coverage["weight_dequantize"] == 0
    assert result.details["parity"]["top1_agreement"] >= 0.99
    hops = result.details["parity_ledger"]
    assert [h["hop"] for h in hops] == [
        "PyTorch -> ONNX INT8 (optimization disabled)",
        "ONNX INT8 (optimization disabled) -> ONNX INT8 (all)",
    ]
    assert all(h["passed"] for h in hops) and hops[1]["top1_agreement"] >= 0.99
    assert result.notes[0].startswith("INT8 (from QAT) ONNX")
    from edgeslim.devices import edgeslim_bench
    from edgeslim.export.onnx_io import int8_can_saturate, needs_exact_int8

    # qat_weight_bits: auto -> 7-bit weights where ONNX Runtime's fast U8S8 kernels saturate: no exact mode needed
    assert int8_can_saturate(result.artifact.file("model")) is not edgeslim_bench.u8s8_saturates()
    assert not needs_exact_int8(result.artifact.file("model"))
