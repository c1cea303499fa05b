"""Starting from an existing ONNX model: ONNX-only stages run, PyTorch stages are refused early."""

from __future__ import annotations

import shutil

import pytest

from edgeslim.api import load_config
from edgeslim.api import run as run_pipeline
from edgeslim.devices import edgeslim_bench
from edgeslim.errors import UserError
from edgeslim.export.onnx_io import export_onnx
from tests.conftest import small_config, write_config


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, loader, trained, data):
    folder = tmp_path_factory.mktemp("onnx_in")
    return export_onnx(loader.load(trained), data.example_batch(2), folder / "user_model.onnx")


def test_onnx_model_runs_baseline_quantize_bundle_and_benchmark(tmp_path, onnx_model):
    shutil.copyfile(onnx_model, tmp_path / "user_model.onnx")
    stages = [
        "baseline",
        {"quantize": {"calibration_samples": 64, "never_slower": False}},  # INT8 even where slower
        {"export": {"target": "mobile"}},
        {"benchmark": {"runs": 10, "warmup": 1, "op_profile_runs": 0}},
    ]
    # a relative path is taken from the config's folder
    config = load_config(write_config(tmp_path / "run.yaml", small_config(stages, model={"name": "user_model.onnx"})))
    report = run_pipeline(config, tmp_path / "out").report.to_json()
    base, quant, bundle, bench = report["stages"]
    assert [s["status"] for s in report["stages"]] == ["ran"] * 4
    assert base["metrics"]["accuracy"] > 0.7 and base["metrics"]["params"] is None
    assert any("PyTorch stages" in n for n in base["notes"])
    assert quant["metrics"]["size_bytes"] < base["metrics"]["size_bytes"]
    mobile = bundle["details"]["mobile"]
    assert mobile["ort_accuracy"] == pytest.approx(mobile["onnx_accuracy"], abs=0.002)  # same kernels
    if not edgeslim_bench.device_facts()["u8s8_saturates"]:  # elsewhere the default kernels are exact too
        assert mobile["ort_accuracy"] == pytest.approx(quant["metrics"]["accuracy"], abs=0.002)
    assert bench["details"]["reports"] == {"host": "latency-host.json"}
    # the same file contents: everything is reused
    assert [s["status"] for s in run_pipeline(config, tmp_path / "out").report.to_json()["stages"]] == ["cached"] * 4


@pytest.mark.parametrize(
    ("stages", "model", "message"),
    [
        (["baseline", "prune"], None, r"stages\[1\]\.prune: needs a PyTorch model, but model\.name is an ONNX file"),
        (["finetune"], None, r"stages\[0\]\.finetune: needs a PyTorch model.*stages are: baseline, .*export"),
        (["baseline"], {"checkpoint": "w.safetensors"}, r"model: an ONNX model carries its own weights"),
    ],
)
def test_torch_only_settings_on_onnx_input_are_refused(tmp_path, onnx_model, stages, model, message):
    spec = {"name": str(onnx_model), **(model or {})}
    with pytest.raises(UserError, match=message):
        run_pipeline(
            load_config(write_config(tmp_path / "r.yaml", small_config(stages, model=spec))), tmp_path
        ).report.to_json()


def test_onnx_model_that_does_not_fit_the_data_is_refused(tmp_path, onnx_model):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(onnx_model.read_bytes()[:100])
    config = load_config(write_config(tmp_path / "r.yaml", small_config(["baseline"], model={"name": str(bad)})))
    with pytest.raises(UserError, match=r"model\.name: broken\.onnx is not a readable ONNX model"):
        run_pipeline(config, tmp_path / "out").report.to_json()
