"""Latency of a stage's deployable model on the run's host profile.

Each stage's model is timed side by side with the previous stage's model and the baseline's, in
interleaved rounds in one worker process (``edgeslim.devices.host.measure_interleaved``), so their
ratios compare like with like on a noisy machine. Measuring never changes a model, so it has its
own cache key (``keys.measurement_key``: every timed file's sha256, the ``measure:`` settings, the
host profile and this code); changing how or where models are timed re-measures them and retrains
nothing.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeslim.config.schema import HostProfile, MeasureSpec
from edgeslim.data.batches import save_samples
from edgeslim.data.datasets import DataSplits
from edgeslim.devices.edgeslim_bench import summarize
from edgeslim.devices.host import measure_interleaved, measure_latency


def latency_inputs(data: DataSplits, directory: Path, n: int = 64) -> Path:
    """Real test samples for latency runs (tiled to the batch size by the worker): one tensor as
    ``.npy`` (fed to the model's only input, whatever its name), named inputs as ``.npz``."""
    return save_samples(directory / "latency_inputs", data.test.head(n))


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


ROUNDS = 10  # rounds of side-by-side timing; measure.runs is spread over them


def rounds_for(runs: int) -> tuple[int, int]:
    """(rounds, runs per round) for ``measure.runs`` timed runs per model: 10 rounds (fewer when
    there are fewer runs), the runs spread over them (rounded up)."""
    rounds = min(ROUNDS, runs)
    return rounds, math.ceil(runs / rounds)


def measure_side_by_side(
    models: Sequence[Path], host: HostProfile, spec: MeasureSpec, data: DataSplits
) -> list[dict[str, Any]]:
    """The latency fields of a stage's metrics for each of ``models`` (deployable files), timed side
    by side in interleaved rounds in one worker process. Put the stage's own model first: it alone
    gets ``peak_rss_mb`` (the worker's peak while only it was loaded)."""
    rounds, per_round = rounds_for(spec.runs)
    with tempfile.TemporaryDirectory() as tmp:
        timed = measure_interleaved(
            models,
            threads=host.threads[0],
            batch_size=host.batch_sizes[0],
            graph_optimization=host.graph_optimization,
            exact_int8=host.exact_int8,
            inputs=latency_inputs(data, Path(tmp)),
            rounds=rounds,
            runs_per_round=per_round,
            warmup=spec.warmup,
            max_seconds=spec.max_seconds * len(models),  # the budget is per model
        )
    fields = []
    for samples, facts in zip(timed["samples_ms"], timed["models"], strict=True):
        lat = summarize(samples)
        fields.append(
            {
                "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "mean", "std")},
                "latency_runs": len(samples),
                "latency_rounds": timed["rounds"],
                "latency_samples_ms": [round(v, 5) for v in samples],  # for the bootstrap intervals
                "input_shape": facts["input_shape"],
                "session_init_ms": facts["session_init_ms"],
                "peak_rss_mb": facts["peak_rss_mb"],
                "threads": host.threads[0],
                "batch_size": host.batch_sizes[0],
            }
        )
    return fields
