"""Side-by-side timing: several models in interleaved rounds in one worker process without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.devices.host import measure_interleaved


def matmul_chain(path: Path, layers: int, width: int = 64) -> Path:
    """An ONNX model of ``layers`` MatMuls on a (batch, 1, 8, 8) input: more layers, more time."""
    rng = np.random.default_rng(layers)
    nodes = [helper.make_node("Flatten", ["x"], ["h0"], axis=1)]
    weights = []
    size = 64
    for i in range(layers):
        w = (rng.standard_normal((size, width)) / np.sqrt(size)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
        size = width
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, ["n", width])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("chains")
    return matmul_chain(folder / "light.onnx", 1), matmul_chain(folder / "heavy.onnx", 60, width=256)


def test_every_model_gets_every_round(models):
    light, heavy = models
    result = measure_interleaved([light, heavy], threads=1, batch_size=1, rounds=4, runs_per_round=3, warmup=1)
    assert result["rounds"] == 4 and result["runs_per_round"] == 3
    assert [len(s) for s in result["samples_ms"]] == [12, 12]
    first, second = result["models"]
    assert first["file"] == "light.onnx" and first["input_shape"] == [1, 1, 8, 8] and first["session_init_ms"] > 0
    assert first["peak_rss_mb"] > 0 and second["peak_rss_mb"] is None  # the peak with only the first model loaded
    # a 60-layer 256-wide chain is far slower than one small MatMul, measured in the same rounds
    assert np.median(result["samples_ms"][1]) > 3 * np.median(result["samples_ms"][0])


def test_time_budget_ends_rounds_early_but_keeps_enough_samples(models):
    light, heavy = models
    result = measure_interleaved(
        [heavy, light], threads=1, batch_size=1, rounds=500, runs_per_round=1, warmup=0, max_seconds=1e-6
    )
    assert result["rounds"] == 5  # at least 3 rounds, and at least 5 samples per model
    assert [len(s) for s in result["samples_ms"]] == [5, 5]


def test_the_worker_never_imports_torch(models, tmp_path):
    spec = {
        "models": [str(m) for m in models],
        "threads": 1,
        "batch_size": 1,
        "graph_optimization": "all",
        "exact_int8": True,
        "inputs": None,
        "rounds": 1,
        "runs_per_round": 1,
        "warmup": 0,
        "max_seconds": None,
        "min_rounds": 1,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-X", "importtime", "-m", "edgeslim.devices.host", "spec.json", "out.json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported and "torch" not in imported
    assert len(json.loads((tmp_path / "out.json").read_text())["samples_ms"]) == 2
