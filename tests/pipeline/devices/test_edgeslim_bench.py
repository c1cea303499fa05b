"""The on-device runner: one file, only numpy + onnxruntime, a report in the pipeline's schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeslim.devices import edgeslim_bench
from edgeslim.devices.latency_report import validate_report
from edgeslim.export.onnx_io import export_onnx, onnx_logits
from tests.helpers.onnx_models import dynamic_image_model, token_model

# Runs the copied runner with every non-essential package made unimportable, as on a phone.
ISOLATED = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "pydantic", "pipeline", "stages", "yaml", "rich", "onnx", "sklearn"}:
            raise ImportError(f"{name} is not available on the device")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def device_copy(tmp_path_factory, loader, trained, data):
    """The runner file and a model, copied to a folder that knows nothing of edgeslim."""
    folder = tmp_path_factory.mktemp("device")
    shutil.copyfile(edgeslim_bench.__file__, folder / "edgeslim_bench.py")
    export_onnx(loader.load(trained), data.example_batch(2), folder / "model.onnx")
    np.save(folder / "inputs.npy", data.test.tensors[0][:40].numpy())
    return folder


def run_isolated(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-I", "-c", ISOLATED, str(folder / "edgeslim_bench.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=folder, check=False, timeout=300)


def test_runner_works_without_edgeslim_and_writes_a_valid_report(device_copy, data):
    out = device_copy / "report.json"
    proc = run_isolated(
        device_copy,
        "model.onnx",
        *("--threads", "1", "2", "--batch-sizes", "1", "4", "--warmup", "2", "--runs", "15"),
        *("--inputs", "inputs.npy", "--save-outputs", "outputs.npy", "--profile", "5"),
        *("--device-profile", "pi4", "--label", "final", "--output", str(out)),
    )
    assert proc.returncode == 0, proc.stderr
    report = validate_report(json.loads(out.read_text()))
    assert report.device.profile == "pi4" and report.device.kind == "remote" and not report.device.emulated
    assert report.model.label == "final" and report.model.size_bytes == (device_copy / "model.onnx").stat().st_size
    assert [(r.threads, r.batch_size) for r in report.results] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    for r in report.results:
        assert r.runs == 15 and len(r.samples_ms) == 15 and r.input_shape[0] == r.batch_size
        lat = r.latency_ms
        assert lat.min <= lat.p50 <= lat.p90 <= lat.p95 <= lat.p99 <= lat.max
        assert r.session_init_ms > 0 and r.first_inference_ms > 0 and r.peak_rss_mb > 0
        assert r.op_profile and abs(sum(op.share for op in r.op_profile.values()) - 1) < 1e-6
    saved = np.load(device_copy / "outputs.npy")
    expected = onnx_logits(device_copy / "model.onnx", data.test.tensors[0][:40])
    assert np.abs(saved - expected).max() < 1e-5
    assert "p50" in proc.stdout  # a human line per measurement


def test_percentiles_match_numpy():
    samples = list(np.random.default_rng(0).gamma(2.0, 1.0, size=101))
    stats = edgeslim_bench.summarize(samples)
    for q in (50, 90, 95, 99):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(samples, q))
    assert stats["std"] == pytest.approx(np.std(samples, ddof=1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "no model file at missing.onnx"),
        (["model.onnx", "--threads", "0"], "must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(device_copy, args, message):
    proc = run_isolated(device_copy, *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def dynamic_copy(tmp_path_factory):
    """The runner next to a model with dynamic height and width (and no model_info.json)."""
    folder = tmp_path_factory.mktemp("dynamic")
    shutil.copyfile(edgeslim_bench.__file__, folder / "edgeslim_bench.py")
    dynamic_image_model(folder / "model.onnx")
    token_model(folder / "tokens.onnx", seq="seq")
    return folder


def _report(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = folder / "report.json"
    out.unlink(missing_ok=True)
    proc = run_isolated(folder, *args, "--warmup", "1", "--runs", "3", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_dynamic_height_and_width_without_a_shape_exit_2_naming_the_input(dynamic_copy):
    proc = run_isolated(dynamic_copy, "model.onnx", "--runs", "3")
    assert proc.returncode == 2 and proc.stdout == ""  # nothing measured at a made-up size
    (line,) = proc.stderr.strip().splitlines()
    assert "input 'x' has dynamic axes [batch, 3, height, width]" in line
    assert "--shape x=1x3x<height>x<width>" in line


def test_shape_option_sizes_the_dynamic_axes_and_the_report_records_it(dynamic_copy):
    proc, report = _report(dynamic_copy, "model.onnx", "--shape", "x=1x3x48x192", "--batch-sizes", "1", "2")
    validate_report(report)
    assert [r["input_shape"] for r in report["results"]] == [[1, 3, 48, 192], [2, 3, 48, 192]]
    assert report["results"][0]["inputs"] == [
        {"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32", "source": "--shape"}
    ]
    assert "batch 1 (x 1x3x48x192)" in proc.stdout and "batch 2 (x 2x3x48x192)" in proc.stdout
    _, bare = _report(dynamic_copy, "model.onnx", "--shape", "1x3x32x32")  # one input: the name may be left out
    assert bare["results"][0]["input_shape"] == [1, 3, 32, 32]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("x=1x3x48", "gives input 'x' 3 axes"),
        ("x=1x4x48x48", "the model fixes it to [batch, 3, height, width]"),
        ("y=1x3x48x48", "--shape names 'y', but the model's inputs are: x"),
        ("x=1x3xbig", "expected NAME=DxDx..."),
    ],
)
def test_a_wrong_shape_exits_2_with_one_line(dynamic_copy, shape, message):
    proc = run_isolated(dynamic_copy, "model.onnx", "--shape", shape, "--runs", "3")
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_model_info_next_to_the_model_gives_the_example_shape(tmp_path, dynamic_copy):
    shutil.copyfile(dynamic_copy / "edgeslim_bench.py", tmp_path / "edgeslim_bench.py")
    shutil.copyfile(dynamic_copy / "model.onnx", tmp_path / "model.onnx")
    info = {"inputs": [{"name": "x", "shape": ["batch", 3, "height", "width"], "example_shape": [1, 3, 40, 56]}]}
    (tmp_path / "model_info.json").write_text(json.dumps(info))
    _, report = _report(tmp_path, "model.onnx", "--batch-sizes", "4")
    (used,) = report["results"][0]["inputs"]
    assert used["shape"] == [4, 3, 40, 56] and used["source"] == "model_info.json"
    _, report = _report(tmp_path, "model.onnx", "--shape", "x=1x3x24x24")  # --shape wins over the file
    assert report["results"][0]["input_shape"] == [1, 3, 24, 24]


def test_integer_token_inputs_run_with_their_own_dtype(dynamic_copy):
    proc = run_isolated(dynamic_copy, "tokens.onnx", "--runs", "3")
    assert proc.returncode == 2 and "input 'ids' has dynamic axes [batch, seq]" in proc.stderr
    _, report = _report(dynamic_copy, "tokens.onnx", "--shape", "ids=1x32", "--shape", "attention_mask=1x32")
    assert [(i["name"], i["shape"], i["dtype"]) for i in report["results"][0]["inputs"]] == [
        ("ids", [1, 32], "int64"),
        ("attention_mask", [1, 32], "int64"),
    ]


def test_stand_in_values_follow_each_inputs_onnx_type(tmp_path):
    session = edgeslim_bench.create_session(str(token_model(tmp_path / "tokens.onnx")))
    feed, used = edgeslim_bench.make_feed(session, 3)
    assert feed["ids"].dtype == np.int64 and feed["ids"].shape == (3, 16)
    assert feed["ids"].min() >= 0 and feed["ids"].max() < 100 and len(np.unique(feed["ids"])) > 1
    assert (feed["attention_mask"] == 1).all()  # a mask of ones: every token counts
    assert [u["source"] for u in used] == ["model", "model"]
    assert session.run(None, feed)[0].shape == (3, 8)
    with pytest.raises(edgeslim_bench.ShapeError, match="fixed batch axis"):
        edgeslim_bench.make_feed(edgeslim_bench.create_session(str(_fixed_batch(tmp_path))), 2)


def _fixed_batch(folder: Path) -> Path:
    """A one-input model whose batch axis is fixed to 1."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(folder / "fixed.onnx"))
    return folder / "fixed.onnx"


def test_token_types_are_zeros_not_random_ids():
    """BERT has 2 token types: random ids would index past its token-type embedding on a device."""
    from types import SimpleNamespace

    meta = SimpleNamespace(name="token_type_ids", type="tensor(int64)")
    assert (edgeslim_bench._values(meta, [2, 16], 0) == 0).all()
    ids = edgeslim_bench._values(SimpleNamespace(name="input_ids", type="tensor(int64)"), [2, 16], 0)
    assert len(np.unique(ids)) > 1
