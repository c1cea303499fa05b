"""Latency of a stage's deployable model on the run's host profile.

Measuring never changes a model, so it has its own cache key (``keys.measurement_key``: the
file's sha256, the ``measure:`` settings, the host profile and this code); changing how or where
models are timed re-measures them and retrains nothing. The timing itself runs in a separate
process (``edgeslim.devices.host``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.config.schema import HostProfile, MeasureSpec
from edgeslim.data.datasets import DataSplits
from edgeslim.devices.host import measure_latency


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
        exact_int8=host.exact_int8,
    )


def measure_model(model: Path, host: HostProfile, spec: MeasureSpec, data: DataSplits) -> dict[str, Any]:
    """The latency fields of a stage's metrics, for the deployable file ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        latency = host_latency(
            model,
            host,
            warmup=spec.warmup,
            runs=spec.runs,
            max_seconds=spec.max_seconds,
            inputs=latency_inputs(data, Path(tmp)),
        )
    lat = latency["latency_ms"]
    return {
        "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "mean", "std")},
        "latency_runs": latency["runs"],
        "latency_samples_ms": [round(v, 5) for v in latency["samples_ms"]],  # for noise tests in `compare`
        "input_shape": latency["input_shape"],
        "session_init_ms": latency["session_init_ms"],
        "peak_rss_mb": latency["peak_rss_mb"],
        "threads": host.threads[0],
        "batch_size": host.batch_sizes[0],
    }
