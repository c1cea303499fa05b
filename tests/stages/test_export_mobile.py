"""The phone bundle: ORT-format model, operator config, model info, app snippets, checked accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeslim.devices import edgeslim_bench
from edgeslim.engine.evaluate import onnx_accuracy
from edgeslim.errors import UserError
from edgeslim.export.mobile import build_bundle
from edgeslim.export.onnx_io import onnx_logits
from tests.conftest import make_context, plan_for, stage_for
from tests.helpers.onnx_models import dynamic_image_model


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
    assert inp["shape"][0] == "batch" and inp["example_shape"] == [1, 1, 8, 8]
    assert info["output"] == {
        "name": "logits",
        "kind": "logits",
        "kind_judged_on": "16 real input samples",
        "labels": info["labels"],
    }
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


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory):
    """The bundle of a model with dynamic height and width, built with real-sized 48x192 samples."""
    tmp = tmp_path_factory.mktemp("dynamic")
    samples = np.random.default_rng(0).standard_normal((5, 3, 48, 192)).astype(np.float32)
    build_bundle(dynamic_image_model(tmp / "in.onnx"), tmp, preprocessing=None, labels=None, samples=samples)
    return tmp / "mobile"


def test_dynamic_axes_are_named_and_the_snippets_use_the_data_size(dynamic_bundle):
    info = json.loads((dynamic_bundle / "model_info.json").read_text())
    (inp,) = info["inputs"]
    assert inp["shape"] == ["batch", 3, "height", "width"] and inp["example_shape"] == [1, 3, 48, 192]
    assert info["output"]["kind"] == "logits" and "apply softmax" in info["output_is"]
    readme = (dynamic_bundle / "README.md").read_text()
    for snippet in ("FloatArray(27648)", "longArrayOf(1L, 3L, 48L, 192L)", "new long[]{1L, 3L, 48L, 192L}"):
        assert snippet in readme  # Kotlin, Java
    assert "shape: [1, 3, 48, 192]" in readme and "shape:@[@1, @3, @48, @192]" in readme  # Swift, Obj-C
    assert "3L, 1L, 1L" not in readme and "[1, 3, 1, 1]" not in readme and "@3, @1, @1" not in readme
    assert "holds logits (apply softmax" in readme


def test_edgeslim_bench_measures_a_bundle_at_its_example_shape(dynamic_bundle, tmp_path):
    out = tmp_path / "device.json"
    args = [str(dynamic_bundle / "model.ort"), "--warmup", "0", "--runs", "2", "--batch-sizes", "2", "-o", str(out)]
    assert edgeslim_bench.main(args) == 0
    (used,) = json.loads(out.read_text())["results"][0]["inputs"]
    assert used == {"name": "x", "shape": [2, 3, 48, 192], "dtype": "float32", "source": "model_info.json"}


def test_a_softmax_output_is_recorded_as_probabilities(tmp_path):
    samples = np.random.default_rng(1).standard_normal((4, 3, 20, 30)).astype(np.float32)
    model = dynamic_image_model(tmp_path / "in.onnx", softmax=True)
    bundle = build_bundle(model, tmp_path, preprocessing=None, labels=list("abcd"), samples=samples)
    info = bundle["info"]
    assert info["output"] == {
        "name": "probs",
        "kind": "probabilities",
        "kind_judged_on": "4 real input samples",
        "labels": ["a", "b", "c", "d"],
    }
    assert "apply softmax" not in info["output_is"] and info["inputs"][0]["example_shape"] == [1, 3, 20, 30]
    readme = (tmp_path / "mobile" / "README.md").read_text()
    assert "apply softmax" not in readme and "holds class probabilities" in readme and "val probs" in readme


def test_without_samples_a_dynamic_axis_stays_a_named_placeholder_not_1(tmp_path):
    bundle = build_bundle(dynamic_image_model(tmp_path / "in.onnx"), tmp_path, preprocessing=None, labels=None)
    info = bundle["info"]
    assert info["inputs"][0]["example_shape"] is None and info["output"]["kind_judged_on"] is None
    readme = (tmp_path / "mobile" / "README.md").read_text()
    assert "longArrayOf(1L, 3L, HEIGHT.toLong(), WIDTH.toLong())" in readme and "Set HEIGHT, WIDTH" in readme
    assert "not checked" in info["output_is"] and "logits or probabilities: not checked" in readme
