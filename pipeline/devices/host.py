"""Run latency measurements in a clean subprocess (see ``edgeslim_bench.py`` for why).

``measure_latency`` times one model; ``measure_interleaved`` times several side by side in one
worker process (``python -m edgeslim.devices.host``; it imports ONNX Runtime and
``edgeslim_bench``, never torch). On a shared machine the load changes from second to second:
timing model A for five seconds and then model B compares two moments, not two models. Here every
round times each model a few runs in turn, the order rotating from round to round, so a slow
moment hits every model alike, and every per-run sample is kept for the bootstrap
(``edgeslim.engine.stats``).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeslim.devices import edgeslim_bench
from edgeslim.engine.children import run_child
from edgeslim.errors import StageFailed

RUNNER = Path(__file__).with_name("edgeslim_bench.py")
MIN_SAMPLES_PER_MODEL = 5  # the time budget never stops the rounds before every model has this many


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
    from edgeslim.export.onnx_io import needs_exact_int8  # parent side only: the worker stays light

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
        if not (exact_int8 and needs_exact_int8(model)):
            cmd += ["--fast-u8s8"]
        proc = run_child(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise StageFailed(f"latency measurement of {model.name} failed: {last}")
        return json.loads(out.read_text())["results"][0]


def measure_interleaved(
    models: Sequence[Path],
    *,
    threads: int,
    batch_size: int,
    graph_optimization: str = "all",
    exact_int8: bool = True,
    inputs: Path | None = None,
    rounds: int = 10,
    runs_per_round: int = 10,
    warmup: int = 10,
    max_seconds: float | None = None,
    min_rounds: int = 3,
) -> dict[str, Any]:
    """Several models timed side by side in one fresh process, in interleaved rounds.

    Each model is loaded and warmed up (``warmup`` runs) first. Then, ``rounds`` times: every model
    in turn (the order rotates by one each round) runs once untimed and ``runs_per_round`` times
    timed. ``max_seconds`` (all models together) ends the rounds early, after the round that
    passes it, but never before ``min_rounds`` rounds and 5 samples per model.

    Returns ``samples_ms`` (per model, in the order given, in time order), ``rounds`` (done),
    ``runs_per_round``, and ``models``: per model its input shape, session-init and first-inference
    time; the first model also gets ``peak_rss_mb``, the process's peak while only it was loaded.
    ``exact_int8`` applies to the models that need it (``onnx_io.needs_exact_int8``).
    """
    from edgeslim.export.onnx_io import needs_exact_int8  # parent side only: the worker stays light

    spec = {
        "models": [str(m) for m in models],
        "threads": threads,
        "batch_size": batch_size,
        "graph_optimization": graph_optimization,
        "exact_int8": [exact_int8 and needs_exact_int8(Path(m)) for m in models],
        "inputs": str(inputs) if inputs is not None else None,
        "rounds": rounds,
        "runs_per_round": runs_per_round,
        "warmup": warmup,
        "max_seconds": max_seconds,
        "min_rounds": min_rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "edgeslim.devices.host", str(spec_path), str(out)]
        proc = run_child(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            names = ", ".join(Path(m).name for m in models)
            raise StageFailed(f"side-by-side latency measurement of {names} failed: {last}")
        return json.loads(out.read_text())


def run_rounds(spec: dict[str, Any]) -> dict[str, Any]:
    """The worker's loop (see :func:`measure_interleaved`); runs in the worker process."""
    sessions, feeds, facts = [], [], []
    exact = spec["exact_int8"]  # per model (or one flag for all)
    exact = exact if isinstance(exact, list) else [exact] * len(spec["models"])
    for i, path in enumerate(spec["models"]):
        start = time.perf_counter()
        session = edgeslim_bench.create_session(path, spec["threads"], spec["graph_optimization"], exact_int8=exact[i])
        init_ms = (time.perf_counter() - start) * 1e3
        feed, used = edgeslim_bench.make_feed(session, spec["batch_size"], spec["inputs"])  # every input
        batch = feed[used[0]["name"]]
        start = time.perf_counter()
        session.run(None, feed)
        first_ms = (time.perf_counter() - start) * 1e3
        for _ in range(spec["warmup"]):
            session.run(None, feed)
        facts.append(
            {
                "file": Path(path).name,
                "input_shape": list(batch.shape),
                "session_init_ms": init_ms,
                "first_inference_ms": first_ms,
                "peak_rss_mb": edgeslim_bench._peak_rss_mb() if i == 0 else None,
            }
        )
        sessions.append(session)
        feeds.append(feed)
    n, per_round = len(sessions), spec["runs_per_round"]
    min_rounds = min(spec["rounds"], max(spec["min_rounds"], math.ceil(MIN_SAMPLES_PER_MODEL / per_round)))
    samples: list[list[float]] = [[] for _ in sessions]
    budget = spec["max_seconds"]
    deadline = time.perf_counter() + budget if budget else None
    done = 0
    for r in range(spec["rounds"]):
        for k in range(n):
            i = (r + k) % n  # rotate who goes first
            sessions[i].run(None, feeds[i])  # untimed: the caches held the previous model's weights
            for _ in range(per_round):
                start = time.perf_counter()
                sessions[i].run(None, feeds[i])
                samples[i].append((time.perf_counter() - start) * 1e3)
        done = r + 1
        if deadline is not None and time.perf_counter() > deadline and done >= min_rounds:
            break
    return {"samples_ms": samples, "rounds": done, "runs_per_round": per_round, "models": facts}


def _worker(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run_rounds(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
