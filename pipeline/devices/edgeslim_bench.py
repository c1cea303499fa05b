"""edgeslim-bench: measure an ONNX model's latency with ONNX Runtime, here or on a device.

This one file needs only Python 3.9+, numpy and onnxruntime, so it can be copied to a
Raspberry Pi or a phone (Termux) and run there::

    python edgeslim_bench.py model.onnx --threads 1 2 --batch-sizes 1 8 --output pi4.json

It warms up, times a fixed number of runs (or until a time budget is spent) and writes a
report in the schema the pipeline's benchmark stage writes (``edgeslim.latency-report/1``):
percentiles, first-inference and session-init time, peak memory, the device's facts and,
with ``--profile``, ONNX Runtime's per-operator time aggregated by op type. Bring the
report back and feed it to ``edgeslim compare`` or a ``remote`` device profile.

The pipeline runs this file in a fresh process for every measurement: mixing torch and
ONNX Runtime in one process distorts timings.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import sys
import tempfile
import time

SCHEMA = "edgeslim.latency-report/1"
VERSION = "0.1.0"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd", "asimddp", "i8mm", "sve")
GRAPH_LEVELS = ("disable", "basic", "extended", "all")
# x86 CPUs without VNNI (SSE4.1/AVX2/AVX-512 without VNNI) run ONNX Runtime's U8S8 INT8 kernels with
# 16-bit intermediate sums that saturate: the same model then answers differently there than on ARM,
# on VNNI CPUs or in PyTorch (90% top-1 agreement seen on a QAT CNN). This session option makes ONNX
# Runtime use exact U8U8 kernels there instead; it changes nothing on VNNI or ARM CPUs.
EXACT_INT8_OPTION = "session.x64quantprecision"


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

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def device_facts() -> dict[str, object]:
    """CPU model, cores, OS and versions: the context a latency number needs."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware", "Model") and value.strip():
                    cpu = value.strip()
                if key in ("flags", "Features") and not flags:
                    flags = [f for f in value.split() if f in ISA_FLAGS]
                if key == "CPU part" and cpu == platform.machine():
                    cpu = f"{platform.machine()} (CPU part {value.strip()})"
    except OSError:
        pass
    import onnxruntime

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return {
        "cpu": cpu,
        "isa_flags": flags,
        # ONNX Runtime's default U8S8 INT8 kernels saturate on this CPU (x86 without VNNI)
        "u8s8_saturates": x86 and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags),
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": __import__("numpy").__version__,
    }


def create_session(
    model_path: str,
    threads: int = 1,
    graph_optimization: str = "all",
    profile_prefix: str | None = None,
    exact_int8: bool = True,
):
    """A CPU session with explicit threads (ORT's default uses every core) and sequential execution.

    ``exact_int8``: exact INT8 arithmetic on x86 CPUs without VNNI (see ``EXACT_INT8_OPTION``)."""
    import onnxruntime as ort

    options = session_options(threads, graph_optimization, exact_int8)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def session_options(threads: int = 1, graph_optimization: str = "all", exact_int8: bool = True):
    """The session options every edgeslim measurement uses (also for saving the executed graph)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if exact_int8:
        options.add_session_config_entry(EXACT_INT8_OPTION, "1")
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
    return options


def make_batch(session, batch_size: int, inputs_path: str | None):
    """Real samples from a .npy file tiled to the batch size, else seeded random numbers."""
    import numpy as np

    meta = session.get_inputs()[0]
    if inputs_path:
        samples = np.load(inputs_path, allow_pickle=False)
        reps = -(-batch_size // len(samples))
        batch = np.concatenate([samples] * reps)[:batch_size]
    else:
        shape = [batch_size] + [d if isinstance(d, int) else 1 for d in meta.shape[1:]]
        batch = np.random.default_rng(0).standard_normal(shape)
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}.get(
        meta.type, np.float32
    )
    return meta.name, batch.astype(dtype)


def op_profile(
    model_path: str, threads: int, graph_optimization: str, feed: dict, runs: int, exact_int8: bool = True
) -> dict[str, dict]:
    """Per-op-type time from ONNX Runtime's profiler, in a session of its own (profiling slows runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = create_session(model_path, threads, graph_optimization, os.path.join(tmp, "ort"), exact_int8)
        for _ in range(runs):
            session.run(None, feed)
        trace_path = session.end_profiling()
        with open(trace_path) as fh:
            events = json.load(fh)
        for leftover in glob.glob(os.path.join(tmp, "*")):
            os.remove(leftover)
    totals: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        entry = totals.setdefault(op, [0.0, 0])
        entry[0] += event.get("dur", 0) / 1e3
        entry[1] += 1
    grand = sum(t for t, _ in totals.values()) or 1.0
    return {
        op: {"mean_ms_per_run": t / runs, "nodes_per_run": n / runs, "share": t / grand}
        for op, (t, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])
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
    profile_runs: int = 0,
    outputs_path: str | None = None,
    exact_int8: bool = True,
) -> dict[str, object]:
    """One (threads, batch size) measurement: the entries of a report's ``results`` list."""
    import numpy as np

    rss_before = _rss_mb()
    start = time.perf_counter()
    session = create_session(model_path, threads, graph_optimization, exact_int8=exact_int8)
    init_ms = (time.perf_counter() - start) * 1e3
    name, batch = make_batch(session, batch_size, inputs_path)
    feed = {name: batch}

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
    rss_after = _rss_mb()
    if outputs_path and inputs_path:  # every input sample's outputs, for parity checks across devices
        samples = np.load(inputs_path, allow_pickle=False).astype(batch.dtype)
        np.save(outputs_path, session.run(None, {name: samples})[0])
    latency = summarize(samples_ms)
    return {
        "threads": threads,
        "batch_size": batch_size,
        "input_name": name,
        "input_shape": list(batch.shape),
        "input_dtype": str(batch.dtype),
        "graph_optimization": graph_optimization,
        "exact_int8": exact_int8,
        "warmup": warmup,
        "runs": len(samples_ms),
        "latency_ms": latency,
        "samples_ms": samples_ms,
        "throughput_per_s": batch_size * 1e3 / latency["p50"],
        "session_init_ms": init_ms,
        "first_inference_ms": first_ms,
        "peak_rss_mb": _peak_rss_mb(),
        "session_rss_mb": (rss_after - rss_before) if rss_after and rss_before else None,
        "op_profile": (
            op_profile(model_path, threads, graph_optimization, feed, profile_runs, exact_int8)
            if profile_runs
            else None
        ),
    }


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_report(
    model_path: str,
    results: list[dict],
    *,
    profile: str = "host",
    kind: str = "host",
    label: str | None = None,
    context: dict | None = None,
    notes: list[str] | None = None,
    facts: dict | None = None,
) -> dict[str, object]:
    """A complete report: the model, the device, the context and every measurement."""
    return {
        "schema": SCHEMA,
        "tool": {"name": "edgeslim-bench", "version": VERSION},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "label": label or os.path.splitext(os.path.basename(model_path))[0],
            "file": os.path.basename(model_path),
            "sha256": sha256_file(model_path),
            "size_bytes": os.path.getsize(model_path),
        },
        "device": {"profile": profile, "kind": kind, "emulated": kind == "arm64-emulated", **(facts or device_facts())},
        "context": context or {},
        "results": results,
        "notes": notes or [],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeslim-bench",
        description="Measure ONNX Runtime CPU latency of one model; writes an edgeslim latency report (JSON).",
    )
    parser.add_argument("model", help="path to a .onnx or .ort model")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="intra-op thread counts (default 1)")
    parser.add_argument("--batch-sizes", "--batch-size", type=int, nargs="+", default=[1], dest="batch_sizes")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs (default 200)")
    parser.add_argument("--max-seconds", type=float, default=None, help="time budget for the timed runs")
    parser.add_argument("--graph-optimization", choices=GRAPH_LEVELS, default="all")
    parser.add_argument(
        "--fast-u8s8",
        dest="exact_int8",
        action="store_false",
        help="ONNX Runtime's default U8S8 INT8 kernels, which saturate on x86 CPUs without VNNI "
        "(default: exact INT8 arithmetic there; no difference on VNNI or ARM CPUs)",
    )
    parser.add_argument("--inputs", default=None, help=".npy file of real input samples (tiled to the batch)")
    parser.add_argument("--profile", type=int, default=0, metavar="RUNS", help="also profile RUNS runs per op type")
    parser.add_argument("--save-outputs", default=None, metavar="NPY", help="save the outputs of all --inputs")
    parser.add_argument("--label", default=None, help="model label in the report (default: file name)")
    parser.add_argument("--device-profile", default=None, help="device name in the report (default: host name)")
    parser.add_argument("--kind", choices=["host", "arm64-emulated", "remote"], default="remote")
    parser.add_argument("--accuracy", type=float, default=None, help="the model's test accuracy, for the report")
    parser.add_argument("--output", "-o", default=None, help="write the report here (default: stdout)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not os.path.isfile(args.model):
        print(f"edgeslim-bench: error: no model file at {args.model}", file=sys.stderr)
        return 2
    if any(v < 1 for v in args.threads + args.batch_sizes) or args.runs < 1 or args.warmup < 0:
        print("edgeslim-bench: error: threads, batch sizes and runs must be >= 1, warmup >= 0", file=sys.stderr)
        return 2
    results = []
    for threads in args.threads:
        for batch_size in args.batch_sizes:
            results.append(
                measure(
                    args.model,
                    threads,
                    batch_size,
                    args.warmup,
                    args.runs,
                    args.max_seconds,
                    args.graph_optimization,
                    args.inputs,
                    args.profile,
                    args.save_outputs if (threads, batch_size) == (args.threads[0], args.batch_sizes[0]) else None,
                    args.exact_int8,
                )
            )
    profile = args.device_profile or platform.node() or "device"
    context = {} if args.accuracy is None else {"accuracy": args.accuracy}
    report = make_report(args.model, results, profile=profile, kind=args.kind, label=args.label, context=context)
    text = json.dumps(report) + "\n"
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, args.output)
        for r in results:
            lat = r["latency_ms"]
            print(
                f"{r['threads']} thread(s), batch {r['batch_size']}: p50 {lat['p50']:.3f} ms, "
                f"p99 {lat['p99']:.3f} ms ({r['runs']} runs)"
            )
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
