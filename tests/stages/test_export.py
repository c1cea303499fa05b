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


def test_export_fails_clearly_below_agreement_threshold(tmp_path, data, loader, trained, monkeypatch):
    import edgeslim.stages.export as export_module

    real = export_module.onnx_logits
    monkeypatch.setattr(export_module, "onnx_logits", lambda *a, **k: -real(*a, **k))  # a broken runtime
    stages = [{"export": {"min_top1_agreement": 0.99}}]
    with pytest.raises(StageFailed, match=r"stages\[0\]\.export: ONNX and PyTorch agree on top-1 for only"):
        stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
