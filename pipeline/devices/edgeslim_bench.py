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
import functools
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
# Runtime use exact U8U8 kernels there instead. On VNNI CPUs the default kernels are exact already and
# the option only slows them down (a MiniLM INT8 model: 9.8 vs 6.0 ms, bitwise-equal outputs), so it is
# set only where the default kernels saturate (:func:`u8s8_saturates`).
EXACT_INT8_OPTION = "session.x64quantprecision"
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
INFO_FILE = "model_info.json"  # the phone bundle's model description (pipeline/export/mobile.py)
FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}
INT_TYPES = {f"tensor({t})": t for t in ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8")}


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


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's name and which of ``ISA_FLAGS`` it has, from ``/proc/cpuinfo`` where there is one."""
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
    return cpu, flags


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """Whether ONNX Runtime's default U8S8 INT8 kernels saturate on this CPU (x86 without VNNI): the
    only CPUs where the exact INT8 mode (``EXACT_INT8_OPTION``) changes results, and so is asked."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not VNNI_FLAGS & set(_cpu_model_and_flags()[1])


def device_facts() -> dict[str, object]:
    """CPU model, cores, OS and versions: the context a latency number needs."""
    cpu, flags = _cpu_model_and_flags()
    import onnxruntime

    return {
        "cpu": cpu,
        "isa_flags": flags,
        # ONNX Runtime's default U8S8 INT8 kernels saturate on this CPU (x86 without VNNI)
        "u8s8_saturates": u8s8_saturates(),
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

    ``exact_int8``: exact INT8 arithmetic on x86 CPUs without VNNI (see ``EXACT_INT8_OPTION``); elsewhere
    the default kernels are exact and the option is left off."""
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
    if exact_int8 and u8s8_saturates():
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


class ShapeError(ValueError):
    """An input's shape cannot be settled: the runner stops rather than time a made-up size."""


def _fixed(dim: object) -> bool:
    """ONNX Runtime reports a fixed axis as an int, a dynamic one as its name (str) or None."""
    return isinstance(dim, int) and dim > 0


def parse_shape_args(specs: list[str] | None) -> dict[str | None, list[int]]:
    """``name=1x3x48x192`` per input (``None`` key: a bare ``1x3x48x192`` for a one-input model)."""
    shapes: dict[str | None, list[int]] = {}
    for spec in specs or []:
        name, sep, dims_text = spec.rpartition("=")
        key = name if sep else None
        try:
            dims = [int(d) for d in dims_text.lower().split("x")]
        except ValueError:
            dims = []
        if not dims or any(d < 1 for d in dims) or (sep and not name):
            raise ShapeError(f"--shape {spec!r}: expected NAME=DxDx... with sizes >= 1, e.g. input=1x3x224x224")
        if key in shapes:
            raise ShapeError(f"--shape given twice for {'input ' + repr(key) if key else 'the input'}")
        shapes[key] = dims
    return shapes


def info_shapes(model_path: str) -> dict[str, list[int]]:
    """Each input's ``example_shape`` from a ``model_info.json`` next to the model (the phone bundle's)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), INFO_FILE)
    try:
        with open(path) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return {}
    shapes: dict[str, list[int]] = {}
    for entry in info.get("inputs", []) if isinstance(info, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        shape = entry.get("example_shape") or entry.get("shape")  # older bundles: only "shape"
        if isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape):
            shapes[entry["name"]] = shape
    return shapes


def _shape_hint(meta) -> str:
    """The --shape argument a user would pass for ``meta``, dynamic axes as <name> placeholders."""
    dims = [str(d) if _fixed(d) else ("1" if i == 0 else f"<{d or f'dim{i}'}>") for i, d in enumerate(meta.shape)]
    return f"--shape {meta.name}={'x'.join(dims)}"


def input_shape(meta, batch_size: int, given: list[int] | None, source: str, first: bool = False) -> list[int]:
    """The shape to feed ``meta``: ``given`` (from ``source``) or the model's fixed axes; the batch option
    sets a dynamic first axis. Raises ShapeError for a dynamic axis nobody sized and for contradictions."""
    dims = list(meta.shape)
    shown = "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"
    if given is not None:
        if len(given) != len(dims):
            raise ShapeError(
                f"{source} gives input '{meta.name}' {len(given)} axes but the model's are {shown}: "
                f"pass {_shape_hint(meta)}"
            )
        if any(_fixed(dims[i]) and dims[i] != given[i] for i in range(len(dims))):  # zip(strict=) needs 3.10
            raise ShapeError(f"{source} gives input '{meta.name}' {given} but the model fixes it to {shown}")
        shape = list(given)
    else:
        if any(i > 0 and not _fixed(d) for i, d in enumerate(dims)):
            raise ShapeError(f"input '{meta.name}' has dynamic axes {shown}: pass {_shape_hint(meta)}")
        shape = [d if _fixed(d) else 1 for d in dims]
    if dims and not _fixed(dims[0]):
        shape[0] = batch_size
    elif first and dims and dims[0] != batch_size:
        raise ShapeError(f"input '{meta.name}' has a fixed batch axis {shown}: use --batch-sizes {dims[0]}")
    return shape


def _values(meta, shape: list[int], seed: int):
    """Stand-in values by the input's ONNX type: normal floats, small ints (ones for masks, zeros for
    token types and segment ids: BERT has only 2 of them), True."""
    import numpy as np

    if meta.type in FLOAT_TYPES:
        return np.random.default_rng(seed).standard_normal(shape).astype(FLOAT_TYPES[meta.type])
    if meta.type in INT_TYPES:
        dtype = INT_TYPES[meta.type]
        if "mask" in meta.name.lower():
            return np.ones(shape, dtype=dtype)
        if "type" in meta.name.lower() or "segment" in meta.name.lower():
            return np.zeros(shape, dtype=dtype)
        return np.random.default_rng(seed).integers(0, 100, size=shape).astype(dtype)
    if meta.type == "tensor(bool)":
        return np.ones(shape, dtype=bool)
    raise ShapeError(f"input '{meta.name}' has type {meta.type}, which edgeslim-bench cannot make up values for")


def make_feed(
    session,
    batch_size: int,
    inputs_path: object = None,
    shapes: dict[str | None, list[int]] | None = None,
    info: dict[str, list[int]] | None = None,
) -> tuple[dict, list[dict[str, object]]]:
    """Every input of the model, and the shape, dtype and source each one got.

    Inputs take real samples from ``inputs_path`` (see :func:`load_samples`), tiled to the batch, when
    given. Every input without samples gets seeded stand-ins of their ONNX type shaped by ``shapes``
    (``--shape``, by input name; key ``None`` for a one-input model), else by ``info`` (a bundle's
    ``model_info.json`` example shapes), else by the model's fixed axes. A dynamic axis other than
    the batch that nothing sizes raises ShapeError: a made-up 1 would time another model (a 1x1
    image runs many times faster than the real one).
    """
    import numpy as np

    metas = session.get_inputs()
    shapes = dict(shapes or {})
    names = ", ".join(m.name for m in metas)
    if None in shapes:
        if len(metas) != 1:
            raise ShapeError(f"the model has {len(metas)} inputs ({names}): pass --shape NAME=... for each")
        shapes[metas[0].name] = shapes.pop(None)
    unknown = sorted(set(shapes) - {m.name for m in metas})
    if unknown:
        raise ShapeError(f"--shape names {unknown[0]!r}, but the model's inputs are: {names}")
    samples_by_name = load_samples(inputs_path, [m.name for m in metas])
    feed: dict = {}
    used: list[dict[str, object]] = []
    for i, meta in enumerate(metas):
        source = "--shape" if meta.name in shapes else INFO_FILE if meta.name in (info or {}) else "model"
        given = shapes.get(meta.name) or (info or {}).get(meta.name)
        if meta.name in samples_by_name:
            samples = samples_by_name[meta.name]
            if meta.name in shapes and list(shapes[meta.name][1:]) != list(samples.shape[1:]):
                raise ShapeError(
                    f"--shape gives input '{meta.name}' {shapes[meta.name]} but the samples are {samples.shape}"
                )
            reps = -(-batch_size // len(samples))
            batch = np.concatenate([samples] * reps)[:batch_size]
            batch = batch.astype(FLOAT_TYPES.get(meta.type) or INT_TYPES.get(meta.type) or np.float32)
            source = "--inputs"
        else:
            batch = _values(meta, input_shape(meta, batch_size, given, source, first=i == 0), seed=i)
        feed[meta.name] = batch
        used.append({"name": meta.name, "shape": list(batch.shape), "dtype": str(batch.dtype), "source": source})
    return feed, used


def load_samples(inputs: object, names: list[str]) -> dict[str, object]:
    """Real input samples by input name: an ``.npz`` file or a dict (named arrays, one per input), or
    an ``.npy`` file or one array (the first input's)."""
    import numpy as np

    if inputs is None or (isinstance(inputs, str) and not inputs):
        return {}
    if isinstance(inputs, dict):
        return {k: np.asarray(v) for k, v in inputs.items() if k in names}
    if isinstance(inputs, (str, os.PathLike)):
        if str(inputs).endswith(".npz"):
            with np.load(inputs, allow_pickle=False) as f:
                return {k: f[k] for k in f.files if k in names}
        return {names[0]: np.load(inputs, allow_pickle=False)}
    return {names[0]: np.asarray(inputs)}


def make_batch(session, batch_size: int, inputs_path: str | None, shapes: dict | None = None):
    """The first input's name and batch (see :func:`make_feed`, which also fills any other inputs)."""
    feed, used = make_feed(session, batch_size, inputs_path, shapes)
    return used[0]["name"], feed[used[0]["name"]]


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
    shapes: dict[str | None, list[int]] | None = None,
    info: dict[str, list[int]] | None = None,
) -> dict[str, object]:
    """One (threads, batch size) measurement: the entries of a report's ``results`` list.

    ``shapes`` (``--shape``) and ``info`` (``model_info.json``) size dynamic axes: see :func:`make_feed`."""
    import numpy as np

    rss_before = _rss_mb()
    start = time.perf_counter()
    session = create_session(model_path, threads, graph_optimization, exact_int8=exact_int8)
    init_ms = (time.perf_counter() - start) * 1e3
    feed, used = make_feed(session, batch_size, inputs_path, shapes, info)
    name, batch = used[0]["name"], feed[used[0]["name"]]

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
        first = next(iter(load_samples(inputs_path, [m.name for m in session.get_inputs()]).values()))
        everything, _ = make_feed(session, len(first), inputs_path, shapes, info)
        np.save(outputs_path, session.run(None, everything)[0])
    latency = summarize(samples_ms)
    return {
        "threads": threads,
        "batch_size": batch_size,
        "input_name": name,
        "input_shape": list(batch.shape),
        "input_dtype": str(batch.dtype),
        "inputs": used,  # every input's name, shape, dtype and where the shape came from
        "graph_optimization": graph_optimization,
        "exact_int8": exact_int8 and u8s8_saturates(),  # the mode as applied: only where it changes results
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
        "(default: exact INT8 arithmetic there; VNNI and ARM CPUs always run the default kernels, exact there)",
    )
    parser.add_argument(
        "--inputs",
        default=None,
        help="real samples, tiled to the batch: .npy (the first input) or .npz (one array per input name)",
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=None,
        metavar="NAME=1x3x48x192",
        help="an input's shape, one per input (a bare 1x3x48x192 for a one-input model); sizes the dynamic "
        f"axes (a dynamic first axis follows --batch-sizes). Default: the example shapes in a {INFO_FILE} "
        "next to the model, else the model's fixed axes",
    )
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
    try:
        shapes = parse_shape_args(args.shape)
        info = info_shapes(args.model)
        results = [
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
                shapes,
                info,
            )
            for threads in args.threads
            for batch_size in args.batch_sizes
        ]
    except ShapeError as exc:  # one line, not a traceback: only the user knows what size to measure
        print(f"edgeslim-bench: error: {exc}", file=sys.stderr)
        return 2
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
            fed = ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))}" for i in r["inputs"])
            print(
                f"{r['threads']} thread(s), batch {r['batch_size']} ({fed}): p50 {lat['p50']:.3f} ms, "
                f"p99 {lat['p99']:.3f} ms ({r['runs']} runs)"
            )
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
