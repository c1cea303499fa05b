"""The phone bundle: ORT-format model, operator config, model info, app snippets, checked accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeslim.engine.evaluate import onnx_accuracy
from edgeslim.errors import UserError
from edgeslim.export.onnx_io import onnx_logits
from tests.conftest import make_context, plan_for, stage_for


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, data, loader, trained):
    tmp = tmp_path_factory.mktemp("mobile")
    stages = [{"export": {"target": "mobile"}}]
    return stage_for(stages).execute(make_context(tmp, data, loader, trained, stages)), data


def test_bundle_has_every_file_and_a_checked_ort_model(bundle):
    result, data = bundle
    folder = result.artifact.file("mobile_bundle")
    names = {p.name for p in folder.iterdir()}
    assert names == {"model.ort", "model.onnx", "required_operators.config", "model_info.json", "README.md"}
    ort_file = folder / "model.ort"
    assert ort_file.read_bytes()[4:8] == b"ORTM"  # the ORT flatbuffer identifier
    mobile = result.details["mobile"]
    # the reloaded .ort model was evaluated on the real test split, and agrees with the ONNX model
    assert mobile["ort_accuracy"] == pytest.approx(onnx_accuracy(ort_file, data, 256))
    assert abs(mobile["ort_accuracy"] - mobile["onnx_accuracy"]) <= 0.002
    x = data.test.tensors[0][:64]
    diff = np.abs(onnx_logits(ort_file, x) - onnx_logits(result.artifact.file("model"), x)).max()
    assert diff < 1e-4
    hops = result.details["parity_ledger"]  # PyTorch -> ONNX, then ONNX -> .ort on the whole test split
    assert [h["hop"] for h in hops] == ["PyTorch -> ONNX FP32", "ONNX -> .ort (phone bundle)"]
    assert hops[1]["samples"] == len(data.test) and hops[1]["top1_agreement"] == 1.0
    ops = (folder / "required_operators.config").read_text()
    assert "ai.onnx;" in ops and ("Conv" in ops or "QLinearConv" in ops)


def test_model_info_describes_input_preprocessing_and_labels(bundle):
    result, _ = bundle
    info = json.loads((result.artifact.file("mobile_bundle") / "model_info.json").read_text())
    (inp,) = info["inputs"]
    assert inp["name"] == "input" and inp["dtype"] == "float32" and inp["shape"][1:] == [1, 8, 8]
    assert info["preprocessing"] == {
        "layout": "NCHW",
        "scale": 1 / 16,
        "mean": [0.5],
        "std": [0.5],
        "raw_input": "grayscale 8x8, 0-16",
    }
    assert info["labels"] == [str(i) for i in range(10)]
    readme = (result.artifact.file("mobile_bundle") / "README.md").read_text()
    for snippet in ("Kotlin", "Java", "Swift", "Objective-C", "OrtSession", "ORTSession", '"input"'):
        assert snippet in readme


def test_onnx_input_can_be_bundled_but_not_re_exported(tmp_path, data, loader, trained):
    exported = stage_for(["export"]).execute(make_context(tmp_path / "e", data, loader, trained, ["export"])).artifact
    stage = stage_for([{"export": {"target": "mobile"}}])
    plan_for([{"export": {"target": "mobile"}}], exported.kind)
    result = stage.execute(make_context(tmp_path / "m", data, loader, exported, [{"export": {"target": "mobile"}}]))
    assert result.artifact.file("model").read_bytes() == exported.file("model").read_bytes()
    assert result.details["mobile"]["ort_accuracy"] > 0.5
    with pytest.raises(UserError, match="already an ONNX model; use target: mobile"):
        plan_for(["export"], exported.kind)
