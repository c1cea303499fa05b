"""Latency of one ONNX model under ONNX Runtime, measured in a process of its own.

This file imports only the standard library, numpy and onnxruntime, so it runs in a clean
process (mixing torch and ONNX Runtime in one process distorts timings) and can be copied
to a device and run there: ``python ort_bench.py model.onnx --threads 1 --batch-size 1``.
It prints one JSON report on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

SCHEMA = "edgeslim.latency/1"


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    values = sorted(samples_ms)
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    out = {f"p{q}": _percentile(values, q) for q in (50, 90, 95, 99)}
    out.update(mean=mean, std=std, min=values[0], max=values[-1])
    return out


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except (ImportError, OSError):
        return None


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def device_facts() -> dict[str, object]:
    """CPU model, cores, OS and versions: the context a latency number needs."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    cpu = value.strip()
                if key.strip() in ("flags", "Features") and not flags:
                    wanted = (
                        "avx2",
                        "avx512f",
                        "avx512_vnni",
                        "avx_vnni",
                        "amx_int8",
                        "neon",
                        "asimd",
                        "asimddp",
                    )
                    flags = [f for f in value.split() if f in wanted]
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": cpu,
        "isa_flags": flags,
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def measure(
    model_path: str,
    threads: int = 1,
    batch_size: int = 1,
    warmup: int = 20,
    runs: int = 200,
    max_seconds: float | None = None,
    graph_optimization: str = "all",
    inputs_path: str | None = None,
) -> dict[str, object]:
    import numpy as np
    import onnxruntime as ort

    rss_before = _rss_mb()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    start = time.perf_counter()
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    init_ms = (time.perf_counter() - start) * 1e3
    meta = session.get_inputs()[0]

    if inputs_path:  # real samples, tiled to the batch size
        samples = np.load(inputs_path)
        reps = -(-batch_size // len(samples))
        batch = np.concatenate([samples] * reps)[:batch_size]
    else:
        shape = [batch_size] + [d if isinstance(d, int) else 1 for d in meta.shape[1:]]
        batch = np.random.default_rng(0).standard_normal(shape)
    feed = {meta.name: batch.astype(np.float32)}

    start = time.perf_counter()
    session.run(None, feed)
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        session.run(None, feed)
    samples_ms: list[float] = []
    deadline = time.perf_counter() + max_seconds if max_seconds else None
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples_ms.append((time.perf_counter() - start) * 1e3)
        if deadline is not None and time.perf_counter() > deadline and len(samples_ms) >= 5:
            break

    with open(model_path, "rb") as fh:
        model_sha = hashlib.sha256(fh.read()).hexdigest()
    rss_after = _rss_mb()
    return {
        "schema": SCHEMA,
        "model": os.path.basename(model_path),
        "model_sha256": model_sha,
        "model_size_bytes": os.path.getsize(model_path),
        "input_shape": list(batch.shape),
        "batch_size": batch_size,
        "threads": threads,
        "graph_optimization": graph_optimization,
        "warmup": warmup,
        "runs": len(samples_ms),
        "latency_ms": summarize(samples_ms),
        "samples_ms": samples_ms,
        "session_init_ms": init_ms,
        "first_inference_ms": first_ms,
        "peak_rss_mb": _peak_rss_mb(),
        "session_rss_mb": (rss_after - rss_before) if rss_after and rss_before else None,
        "device": device_facts(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure ONNX Runtime CPU latency of one model (JSON on stdout).")
    parser.add_argument("model", help="path to a .onnx file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=None, help="time budget for the timed runs")
    parser.add_argument("--graph-optimization", choices=["disable", "basic", "extended", "all"], default="all")
    parser.add_argument("--inputs", default=None, help=".npy file of real input samples (tiled to the batch)")
    args = parser.parse_args(argv)
    report = measure(
        args.model,
        args.threads,
        args.batch_size,
        args.warmup,
        args.runs,
        args.max_seconds,
        args.graph_optimization,
        args.inputs,
    )
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
