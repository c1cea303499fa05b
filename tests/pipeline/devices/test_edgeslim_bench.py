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
