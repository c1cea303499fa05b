"""One way to measure every stage, so the report compares like with like.

Size is the bytes of the deployable ONNX file (for PyTorch stages: their ONNX export, INT8
for QAT models), accuracy is ONNX Runtime's on the test split, latency is ONNX Runtime's on
the run's device profile (first thread count, first batch size), in a separate process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import qat
from pipeline.artifacts import TORCH, TORCH_QAT, Artifact, sha256_file
from pipeline.benchmark import measure_latency
from pipeline.config import HostProfile, RunConfig
from pipeline.data import DataSplits
from pipeline.onnx_io import export_onnx, onnx_logits
from pipeline.torch_model import ModelLoader

DEPLOY_FILE = "deploy.onnx"


def deployable_onnx(artifact: Artifact, models: ModelLoader, work_dir: Path) -> Path:
    """The ONNX file that would ship for this artifact (exported for PyTorch artifacts)."""
    if artifact.kind in (TORCH, TORCH_QAT):
        model = models.load(artifact)
        if artifact.kind == TORCH_QAT:
            model = qat.convert(model)
        return export_onnx(model, models.example, work_dir / DEPLOY_FILE)
    return artifact.file("model")


def onnx_accuracy(path: Path, data: DataSplits, batch_size: int, split: str = "test") -> float:
    """Top-1 accuracy under ONNX Runtime on one split (decisions use ``val``; reports use ``test``)."""
    x, y = getattr(data, split).tensors
    logits = onnx_logits(path, x, batch_size=batch_size)
    return float((logits.argmax(1) == y.numpy()).mean())


def latency_inputs(data: DataSplits, directory: Path, n: int = 64) -> Path:
    """Real test samples for latency runs (tiled to the batch size by the worker)."""
    path = directory / "latency_inputs.npy"
    np.save(path, data.test.tensors[0][:n].numpy())
    return path


def host_latency(
    model: Path, host: HostProfile, *, warmup: int, runs: int, max_seconds: float, inputs: Path
) -> dict[str, Any]:
    """Latency on the run's host profile, at its first thread count and batch size: where every
    stage is measured, and where ``quantize: {method: auto}`` compares its candidates."""
    return measure_latency(
        model,
        threads=host.threads[0],
        batch_size=host.batch_sizes[0],
        warmup=warmup,
        runs=runs,
        max_seconds=max_seconds,
        graph_optimization=host.graph_optimization,
        inputs=inputs,
    )


def measure_artifact(
    artifact: Artifact, config: RunConfig, data: DataSplits, models: ModelLoader, work_dir: Path
) -> dict[str, Any]:
    onnx_path = deployable_onnx(artifact, models, work_dir)
    device, spec = config.host, config.measure
    with tempfile.TemporaryDirectory() as tmp:
        latency = host_latency(
            onnx_path,
            device,
            warmup=spec.warmup,
            runs=spec.runs,
            max_seconds=spec.max_seconds,
            inputs=latency_inputs(data, Path(tmp)),
        )
    lat = latency["latency_ms"]
    return {
        "accuracy": onnx_accuracy(onnx_path, data, spec.eval_batch_size),
        "val_accuracy": onnx_accuracy(onnx_path, data, spec.eval_batch_size, split="val"),
        "size_bytes": onnx_path.stat().st_size,
        "params": artifact.meta.get("params"),
        "macs": artifact.meta.get("macs"),
        "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "mean", "std")},
        "latency_runs": latency["runs"],
        "latency_samples_ms": [round(v, 5) for v in latency["samples_ms"]],  # for noise tests in `compare`
        "model_sha256": sha256_file(onnx_path),
        "input_shape": latency["input_shape"],
        "session_init_ms": latency["session_init_ms"],
        "peak_rss_mb": latency["peak_rss_mb"],
        "threads": device.threads[0],
        "batch_size": device.batch_sizes[0],
        "deployable": onnx_path.name,
    }
