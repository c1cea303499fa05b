"""Run latency measurements in a clean subprocess (see ``ort_bench.py`` for why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import StageFailed

WORKER = Path(__file__).with_name("ort_bench.py")


def measure_latency(
    model: Path,
    *,
    threads: int,
    batch_size: int,
    warmup: int,
    runs: int,
    max_seconds: float | None,
    graph_optimization: str,
    inputs: Path | None = None,
) -> dict[str, Any]:
    """Latency report for one (model, threads, batch size) in a fresh Python process."""
    cmd = [
        sys.executable,
        str(WORKER),
        str(model),
        "--threads",
        str(threads),
        "--batch-size",
        str(batch_size),
        "--warmup",
        str(warmup),
        "--runs",
        str(runs),
        "--graph-optimization",
        graph_optimization,
    ]
    if max_seconds:
        cmd += ["--max-seconds", str(max_seconds)]
    if inputs is not None:
        cmd += ["--inputs", str(inputs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StageFailed(f"latency measurement of {model.name} failed: {last}")
    return json.loads(proc.stdout)
