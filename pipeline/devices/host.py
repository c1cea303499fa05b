"""Run latency measurements in a clean subprocess (see ``edgeslim_bench.py`` for why)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeslim.engine.children import run_child
from edgeslim.errors import StageFailed

RUNNER = Path(__file__).with_name("edgeslim_bench.py")


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
    profile_runs: int = 0,
    exact_int8: bool = True,
) -> dict[str, Any]:
    """One measurement (an entry of a latency report's ``results``) in a fresh Python process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, str(RUNNER), str(model), "--kind", "host", "--output", str(out)]
        cmd += ["--threads", str(threads), "--batch-sizes", str(batch_size)]
        cmd += ["--warmup", str(warmup), "--runs", str(runs), "--graph-optimization", graph_optimization]
        if max_seconds:
            cmd += ["--max-seconds", str(max_seconds)]
        if inputs is not None:
            cmd += ["--inputs", str(inputs)]
        if profile_runs:
            cmd += ["--profile", str(profile_runs)]
        if not exact_int8:
            cmd += ["--fast-u8s8"]
        proc = run_child(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageFailed(f"latency measurement of {model.name} failed: {last}")
        return json.loads(out.read_text())["results"][0]
