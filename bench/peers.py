"""edgeslim vs peer tools, side by side in one run, on the default pipeline's model and data.

The default pipeline (``edge_cnn`` on MNIST-5k, ``configs/mnist_cnn.yaml``) is run first (cached: seconds
when up to date); its FP32 baseline is then compressed by each peer, and every model is measured the same way:

* ``edgeslim``: the pipeline's final model (50% channel pruning + QAT with distillation -> INT8 ONNX);
* ``ort-static-ptq``: ONNX Runtime ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel, MinMax);
* ``neural-compressor``: Intel Neural Compressor accuracy-aware PTQ (``edgeslim.quant.inc``) of the
  baseline PyTorch model, exported to QDQ ONNX;
* ``ort-dynamic``: ONNX Runtime ``quantize_dynamic`` (slow on convolutions here; reported anyway);
* ``olive``: Microsoft Olive (olive-ai) ``OnnxStaticQuantization`` workflow from the baseline ONNX, run with
  ``olive run`` in its own venv (``artifacts/peers/olive-venv``, created here if missing: Olive needs
  ``pydantic<2.14``, which the project venv does not have);
* ``baseline-fp32`` (reference, not a peer): the unpruned FP32 ONNX model.

Static peers calibrate on the same 256 training images (the ``quantize`` stage's pick). Size is the ONNX
file's bytes; accuracy is ONNX Runtime's on the 1,001-image test split (``edgeslim.engine.evaluate.onnx_accuracy``);
latency is p50 at batch 1 and 32 with 1 thread, one fresh process per measurement
(``edgeslim.devices.host.measure_latency``, real test images), methods interleaved over several rounds; the table
gives the median of the round p50s and their min-max (the noise). Peer models are cached under
``artifacts/peers/`` (rebuilt when their inputs change). Writes docs/peers.json and docs/peers.md. Usage::

    .venv/bin/python bench/peers.py [--rounds 5] [--runs 200] [--warmup 30] [--force] [--inc-wait 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslim.api import load_config  # noqa: E402
from edgeslim.data.datasets import DataSplits, load_data  # noqa: E402
from edgeslim.devices.edgeslim_bench import device_facts  # noqa: E402
from edgeslim.devices.host import measure_latency  # noqa: E402
from edgeslim.engine.evaluate import onnx_accuracy  # noqa: E402
from edgeslim.engine.measure import latency_inputs  # noqa: E402
from edgeslim.engine.store import sha256_file  # noqa: E402
from edgeslim.export.onnx_io import load_onnx, onnx_logits  # noqa: E402
from edgeslim.quant.ort import quiet_ort  # noqa: E402

RECIPE_VERSION = 1  # bump to rebuild every cached peer model
BATCH_SIZES = (1, 32)
CALIBRATION_SAMPLES = 256
OLIVE_VERSION = "0.13.0"
GOAL_SPEEDUP = 1.5
USER_SCRIPT = ROOT / "bench/olive_peer/user_script.py"


class Skipped(Exception):
    """A peer that could not be built here; the message is the reason written into its row."""


@dataclasses.dataclass
class Method:
    name: str
    role: str  # "ours" | "peer" | "reference"
    what: str
    path: Path | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    build_seconds: float | None = None
    cached: bool = False
    skipped: str | None = None


# --------------------------------------------------------------------------------------------- helpers


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def rel(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it (for logs and docs)."""
    full = path.resolve()
    return full.relative_to(ROOT) if full.is_relative_to(ROOT) else full


def log(message: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", flush=True)


def input_name(model: Path) -> str:
    return load_onnx(model, external_data=False).graph.input[0].name


def cached_build(
    method: Method, folder: Path, key_parts: dict[str, Any], build: Callable[[Path], None], force: bool
) -> None:
    """Build ``folder/model.onnx`` with ``build`` unless ``folder/meta.json`` records the same inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()
    model, meta_path = folder / "model.onnx", folder / "meta.json"
    if not force and model.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("model_sha256") == sha256_file(model):
            method.path, method.cached = model, True
            method.settings, method.notes, method.extras = meta["settings"], meta["notes"], meta["extras"]
            method.build_seconds = meta["build_seconds"]
            log(f"{method.name}: cached ({rel(model)})")
            return
    log(f"{method.name}: building ...")
    model.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        build(model)
    except Skipped as exc:
        method.skipped = str(exc)
        log(f"{method.name}: skipped: {exc}")
        return
    method.build_seconds = time.perf_counter() - start
    method.path = model
    meta = {
        "key": key,
        "inputs": key_parts,
        "model_sha256": sha256_file(model),
        "build_seconds": method.build_seconds,
        "settings": method.settings,
        "notes": method.notes,
        "extras": method.extras,
    }
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    log(f"{method.name}: built in {method.build_seconds:.1f} s")


def pick_calibration(data: DataSplits, seed: int, n: int = CALIBRATION_SAMPLES) -> np.ndarray:
    """``n`` training images drawn as the pipeline draws calibration samples (``torch.randperm`` seeded with ``seed``;
    a stage uses the run seed + its index)."""
    import torch

    x_train = data.train.tensors[0]
    pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    return x_train[pick[:n]].numpy().astype(np.float32)


class NpyReader:
    """ONNX Runtime calibration reader: one image per batch."""

    def __init__(self, images: np.ndarray, name: str) -> None:
        self.batches = iter([{name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _reader(images: np.ndarray, name: str) -> Any:
    """Wrap :class:`NpyReader` in ONNX Runtime's abstract base (imported late: it pulls in onnx)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(NpyReader, CalibrationDataReader):
        pass

    return Reader(images, name)


# --------------------------------------------------------------------------------------------- peers


def build_ort_static(method: Method, baseline: Path, calibration: np.ndarray) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from onnxruntime.quantization import QuantFormat, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory(dir=out.parent) as tmp, quiet_ort():
            pre, part = Path(tmp) / "pre.onnx", Path(tmp) / "model.onnx"
            quant_pre_process(str(baseline), str(pre))
            quantize_static(
                str(pre),
                str(part),
                _reader(calibration, input_name(pre)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
            )
            os.replace(part, out)

    method.settings = {
        "calls": "quant_pre_process(baseline) -> quantize_static(quant_format=QDQ, per_channel=True)",
        "activation_type": "QInt8 (default)",
        "weight_type": "QInt8 (default)",
        "calibrate_method": "MinMax (default)",
        "calibration_images": len(calibration),
    }
    method.notes = ["U8S8 activations ran at the same speed as the default S8S8 here (checked once, 0.44 ms b1)"]
    return build


def build_ort_dynamic(method: Method, baseline: Path) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from onnxruntime.quantization import quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory(dir=out.parent) as tmp, quiet_ort():
            pre, part = Path(tmp) / "pre.onnx", Path(tmp) / "model.onnx"
            quant_pre_process(str(baseline), str(pre))
            quantize_dynamic(str(pre), str(part))
            os.replace(part, out)

    method.settings = {
        "calls": "quant_pre_process(baseline) -> quantize_dynamic() (defaults)",
        "weight_type": "QInt8 (default)",
        "per_channel": False,
    }
    method.notes = ["convolutions become ConvInteger + float rescaling: much slower than FP32 on this CPU"]
    return build


def import_inc_backend(wait_s: float) -> Any:
    """``edgeslim.quant.inc`` (written by another engineer); polls up to ``wait_s`` for it to appear."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            importlib.invalidate_caches()
            return importlib.import_module("edgeslim.quant.inc")
        except ImportError as exc:
            if time.monotonic() >= deadline:
                raise Skipped(f"edgeslim.quant.inc is not importable: {exc}") from None
            log(f"neural-compressor: waiting for edgeslim.quant.inc ({exc})")
            time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))


def build_inc(
    method: Method,
    run_dir: Path,
    baseline_dir: str,
    config_path: Path,
    data: DataSplits,
    calibration: np.ndarray,
    wait_s: float,
) -> Callable[[Path], None]:
    method.settings = {
        "calls": "inc_backend.autotune_int8(baseline torch model, tolerable_loss=0.01, max_trials=8, seed) "
        "-> export_int8_onnx",
        "tolerable_loss": 0.01,
        "max_trials": 8,
        "calibration_images": len(calibration),
        "evaluated_on": "validation split (500 images)",
    }

    def build(out: Path) -> None:
        import torch

        from edgeslim.engine.store import Artifact
        from edgeslim.models.loader import ModelLoader

        inc_backend = import_inc_backend(wait_s)
        reason = inc_backend.inc_available()
        if reason is not None:
            raise Skipped(reason)
        config = load_config(config_path)
        loader = ModelLoader(config.model, data.input_shape[0], data.num_classes, data.example_batch(2))
        model = loader.load(Artifact.load(run_dir / baseline_dir))
        example = data.example_batch(2)
        result = inc_backend.autotune_int8(
            model,
            example,
            torch.from_numpy(calibration),
            data.val,
            tolerable_loss=0.01,
            max_trials=8,
            seed=config.seed,
        )
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            part = Path(tmp) / "model.onnx"
            inc_backend.export_int8_onnx(result.model, example, part)
            os.replace(part, out)
        chosen = result.trials[result.chosen]
        method.extras = {
            "trials": [dataclasses.asdict(t) for t in result.trials],
            "chosen_trial": result.chosen,
            "budget_met": result.budget_met,
            "float_val_accuracy": result.float_accuracy,
        }
        method.notes = [
            f"{len(result.trials)} trial(s); chose trial {chosen.index} ({chosen.config['name']}), val accuracy "
            f"{chosen.accuracy:.2%} vs float {result.float_accuracy:.2%}; tolerance "
            + ("met" if result.budget_met else "NOT met")
        ]

    return build


def olive_env() -> dict[str, str]:
    return {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}


def ensure_olive_venv(venv: Path) -> tuple[Path, dict[str, str]]:
    """Olive's own venv (created if missing); returns the ``olive`` executable and its package versions.

    olive-ai 0.13 requires an unpinned ``torch``: plain ``pip install olive-ai`` resolves the newest CUDA build
    (a 5.9 GB venv here). It also imports torch at import time (``olive/model/config/hf_config.py``), so torch
    cannot be left out. So: olive-ai without dependencies, then its dependencies with ``torch==<ours>``, the local
    CPU wheel, and the project's onnxruntime/onnx versions.
    """
    olive, marker = venv / "bin/olive", venv / ".edgeslim-ready.json"
    if olive.is_file() and marker.is_file():
        return olive, json.loads(marker.read_text())
    log(f"olive: creating {rel(venv)} (about 2 minutes)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    install_log = venv.parent / "olive-venv-install.log"
    python3 = shutil.which("python3") or sys.executable
    torch_version = (version("torch") or "2.13.0").split("+")[0]
    with install_log.open("w") as fh:

        def run(cmd: list[str]) -> None:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, env=olive_env())
            if proc.returncode != 0:
                raise Skipped(f"creating Olive's venv failed at '{' '.join(cmd[-3:])}' (see {install_log.name})")

        run([python3, "-m", "venv", str(venv)])
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        constraints = venv / "constraints.txt"
        constraints.write_text(f"torch=={torch_version}\n")
        run([*pip, "--no-deps", f"olive-ai=={OLIVE_VERSION}"])
        run(
            [
                *pip,
                "-c",
                str(constraints),
                f"torch=={torch_version}",
                "torchmetrics>=1.0.0",
                "pydantic<2.14",
                f"onnxruntime=={version('onnxruntime')}",
                f"onnx=={version('onnx')}",
                "onnx_ir>=0.1.2",
                "onnxscript>=0.5.3",
                "opentelemetry-sdk>=1.39.1",
                "optuna",
                "pandas",
                "pyyaml",
                "questionary",
                "transformers",
                "hf-xet",
                "numpy",
                "requests",  # imported by Olive's telemetry module but not declared
            ]
        )
        probe = (
            "import json, importlib.metadata as m, olive; print(json.dumps({p: m.version(p) for p in "
            "('olive-ai', 'onnxruntime', 'onnx', 'torch', 'pydantic', 'numpy')}))"
        )
        proc = subprocess.run(
            [str(venv / "bin/python"), "-c", probe], capture_output=True, text=True, check=False, env=olive_env()
        )
        if proc.returncode != 0:
            fh.write(proc.stderr)
            raise Skipped(f"Olive does not import in its venv (see {install_log.name})")
    versions = json.loads(proc.stdout.strip().splitlines()[-1])
    marker.write_text(json.dumps(versions, indent=2) + "\n")
    return olive, versions


def build_olive(method: Method, baseline: Path, calibration_npy: Path, venv: Path) -> Callable[[Path], None]:
    """Olive's workflow from the baseline ONNX; ``venv`` must exist (:func:`ensure_olive_venv`)."""
    method.settings = {
        "workflow": "ONNXModel (baseline deploy.onnx) -> OnnxStaticQuantization, data config from "
        "bench/olive_peer/user_script.py (the same calibration .npy), CPUExecutionProvider",
        "pass_options": "Olive defaults: quant_preprocess, QDQ, int8 weights and activations, per-tensor, MinMax",
        "calibration_images": int(np.load(calibration_npy, mmap_mode="r", allow_pickle=False).shape[0]),
    }

    def build(out: Path) -> None:
        olive, versions = ensure_olive_venv(venv)
        method.extras = {"olive_venv_versions": versions}
        work = out.parent
        for sub in ("out", "cache"):
            shutil.rmtree(work / sub, ignore_errors=True)
        config = {
            "input_model": {"type": "ONNXModel", "model_path": str(baseline)},
            "systems": {
                "local_system": {
                    "type": "LocalSystem",
                    "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
                }
            },
            "data_configs": [
                {
                    "name": "calibration",
                    "user_script": str(USER_SCRIPT),
                    "load_dataset_config": {
                        "type": "edgeslim_calibration",
                        "npy_path": str(calibration_npy),
                        "input_name": input_name(baseline),
                    },
                    "dataloader_config": {"batch_size": 1},
                }
            ],
            "passes": {"quantization": {"type": "OnnxStaticQuantization", "data_config": "calibration"}},
            "host": "local_system",
            "target": "local_system",
            "evaluate_input_model": False,
            "cache_dir": str(work / "cache"),
            "output_dir": str(work / "out"),
            "log_severity_level": 1,
        }
        config_path = work / "olive_config.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        with (work / "olive.log").open("w") as fh:
            proc = subprocess.run(
                [str(olive), "run", "--config", str(config_path)],
                cwd=work,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=olive_env(),
                check=False,
                timeout=1800,
            )
        produced = work / "out/model.onnx"
        if proc.returncode != 0 or not produced.is_file():
            tail = (work / "olive.log").read_text().strip().splitlines()[-1:] or ["no output"]
            raise Skipped(f"olive run failed (exit {proc.returncode}): {tail[0][:300]}")
        shutil.copyfile(produced, out)
        method.notes = [f"olive-ai {versions.get('olive-ai')} in its own venv; config: {config_path.name}"]

    return build


# --------------------------------------------------------------------------------------------- measuring


def predictions(path: Path, data: DataSplits, batch_size: int) -> np.ndarray:
    return onnx_logits(path, data.test.tensors[0], batch_size=batch_size).argmax(1)


def exact_sign_test(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def measure_rounds(
    models: dict[str, Path], inputs: Path, rounds: int, runs: int, warmup: int, max_seconds: float
) -> dict[str, dict[int, list[dict[str, float]]]]:
    """Round p50s per method and batch size; order rotates every round, batch sizes alternate."""
    names = list(models)
    out: dict[str, dict[int, list[dict[str, float]]]] = {n: {b: [] for b in BATCH_SIZES} for n in names}
    for r in range(rounds):
        start = time.perf_counter()
        order = names[r % len(names) :] + names[: r % len(names)]
        for batch in BATCH_SIZES if r % 2 == 0 else BATCH_SIZES[::-1]:
            for name in order:
                res = measure_latency(
                    models[name],
                    threads=1,
                    batch_size=batch,
                    warmup=warmup,
                    runs=runs,
                    max_seconds=max_seconds,
                    graph_optimization="all",
                    inputs=inputs,
                )
                out[name][batch].append({"p50": res["latency_ms"]["p50"], "runs": res["runs"]})
        log(
            f"latency round {r + 1}/{rounds} ({time.perf_counter() - start:.0f} s): "
            + ", ".join(f"{n} {out[n][1][-1]['p50']:.3f}/{out[n][32][-1]['p50']:.2f}" for n in names)
            + " ms (b1/b32)"
        )
    return out


# --------------------------------------------------------------------------------------------- report


def fmt_ms(value: float | None, spread: list[float] | None) -> str:
    if value is None or spread is None:
        return "—"
    digits = 3 if value < 10 else 1
    return f"{value:.{digits}f} ({spread[0]:.{digits}f}–{spread[1]:.{digits}f})"


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ours = next(r for r in rows if r["method"] == "edgeslim")
    peers = [r for r in rows if r["role"] == "peer" and not r.get("skipped")]
    accuracy = {
        p["method"]: {
            "peer": p["accuracy"],
            "edgeslim_minus_peer_pt": 100 * (ours["accuracy"] - p["accuracy"]),
            "met": ours["accuracy"] >= p["accuracy"] - 1e-12,
        }
        for p in peers
    }
    speed: dict[str, Any] = {}
    for batch in BATCH_SIZES:
        key = f"latency_ms_p50_b{batch}"
        fastest = min(peers, key=lambda p, k=key: p[k])
        spread_key = f"latency_ms_spread_b{batch}"
        speedup = fastest[key] / ours[key]
        speed[f"b{batch}"] = {
            "fastest_peer": fastest["method"],
            "fastest_peer_p50_ms": fastest[key],
            "edgeslim_p50_ms": ours[key],
            "speedup": speedup,
            # against every peer's fastest round and edgeslim's slowest one (the static peers tie within noise)
            "speedup_worst_case": min(p[spread_key][0] for p in peers) / ours[spread_key][1],
            "speedup_best_case": fastest[spread_key][1] / ours[spread_key][0],
            "met": speedup >= GOAL_SPEEDUP,
        }
    return {
        "goal": f"edgeslim's model is at least as accurate as each peer's and >= {GOAL_SPEEDUP}x faster than the "
        "fastest of them",
        "peers_compared": [p["method"] for p in peers],
        "accuracy": accuracy,
        "accuracy_met": all(v["met"] for v in accuracy.values()),
        "speed": speed,
        "speed_met": all(v["met"] for v in speed.values()),
    }


def write_docs(
    rows: list[dict[str, Any]], summary: dict[str, Any], facts: dict[str, Any], args: argparse.Namespace
) -> str:
    ours = next(r for r in rows if r["method"] == "edgeslim")
    base = next(r for r in rows if r["method"] == "baseline-fp32")
    v = summary["verdict"]
    lines = [
        "# edgeslim vs peer tools on the default pipeline",
        "",
        "One run, one model, one data set: `edge_cnn` (1.79 M params, 182 M MACs) trained on MNIST-5k by "
        "`configs/mnist_cnn.yaml`. edgeslim's row is that pipeline's final model (50% channel pruning with the "
        "Hessian criterion, then QAT with distillation from the baseline, INT8 ONNX); every peer starts from the "
        "same trained FP32 baseline (its ONNX export `01-baseline/deploy.onnx`, or for Neural Compressor the "
        "PyTorch model) and calibrates, where it calibrates, on the same 256 training images.",
        "",
        "Command (total wall time of the run that wrote this page: "
        f"{summary['timings_s']['total']:.0f} s; a rerun with everything cached only re-measures):",
        "",
        "```",
        f".venv/bin/python bench/peers.py --rounds {args.rounds} --runs {args.runs} --warmup {args.warmup}",
        "```",
        "",
        f"Machine: {facts['cpu']}, {facts['logical_cores']} logical cores ({', '.join(facts['isa_flags'])}), "
        f"{facts['os']}, Python {facts['python']}, onnxruntime {facts['onnxruntime']}, numpy {facts['numpy']}. "
        "A shared machine: other engineers' jobs ran on the same 2 cores during this run (load average "
        f"{summary['load_average'][0]:.2f} at the start, {summary['load_average'][1]:.2f} at the end), which is "
        "why the rounds are interleaved and their spread is shown.",
        "",
        "## Results",
        "",
        "Latency: ONNX Runtime CPU, 1 thread, graph optimization `all`, p50 in ms, median of "
        f"{args.rounds} interleaved rounds (min–max of the round p50s in brackets = the noise). Accuracy: ONNX "
        "Runtime top-1 on the 1,001-image test split.",
        "",
        "| method | what | size (bytes) | x smaller than FP32 | test accuracy (correct/1,001) | "
        "Δ accuracy, row − edgeslim (pt) | p50 b1 ms (round min–max) | "
        "p50 b32 ms (round min–max) | edgeslim faster (b1 / b32) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['method']} | {r['what']} | — | — | — | — | — | — | skipped: {r['skipped']} |")
            continue
        delta = "" if r is ours else f"{100 * (r['accuracy'] - ours['accuracy']):+.2f}"
        faster = (
            ""
            if r is ours
            else f"{r['latency_ms_p50_b1'] / ours['latency_ms_p50_b1']:.2f}x / "
            f"{r['latency_ms_p50_b32'] / ours['latency_ms_p50_b32']:.2f}x"
        )
        lines.append(
            f"| **{r['method']}** | {r['what']} | {r['size_bytes']:,} | {base['size_bytes'] / r['size_bytes']:.1f}x | "
            f"{r['accuracy']:.2%} ({r['test_correct']}/{r['test_images']}) | {delta} | "
            f"{fmt_ms(r['latency_ms_p50_b1'], r['latency_ms_spread_b1'])} | "
            f"{fmt_ms(r['latency_ms_p50_b32'], r['latency_ms_spread_b32'])} | {faster} |"
        )
    lines += ["", "## Verdict", "", f"Goal: {v['goal']}.", ""]
    if not v["peers_compared"]:
        lines.append("No peer could be measured; no verdict.")
    else:
        acc_lines = []
        for name, a in v["accuracy"].items():
            paired = ours["paired_vs_peers"][name]
            acc_lines.append(
                f"{name} {a['peer']:.2%} ({a['edgeslim_minus_peer_pt']:+.2f} pt; on the images where the two disagree "
                f"edgeslim alone is right on {paired['edgeslim_only_right']}, the peer alone on "
                f"{paired['peer_only_right']}, exact McNemar p = {paired['mcnemar_p']:.2f})"
            )
        worst = min(v["accuracy"].items(), key=lambda kv: kv[1]["edgeslim_minus_peer_pt"])
        peers_ok = [r for r in rows if r["role"] == "peer" and not r.get("skipped")]
        peer_loss = max(max(base["test_correct"] - r["test_correct"], 0) for r in peers_ok)
        min_p = min(ours["paired_vs_peers"][r["method"]]["mcnemar_p"] for r in peers_ok)
        lines.append(
            f"- **Accuracy: {'MET' if v['accuracy_met'] else 'NOT MET'}.** edgeslim {ours['accuracy']:.2%} vs "
            + "; ".join(acc_lines)
            + "."
        )
        if v["accuracy_met"]:
            lines.append(
                f"  Met by a margin no larger than the test set can resolve: the smallest paired McNemar p-value is "
                f"{min_p:.2f}, so on another seed edgeslim may land a few images above or below the peers (the run "
                "behind this page is the default config as shipped; it was not tuned on the test split)."
            )
        if not v["accuracy_met"]:
            lines.append(
                f"  The largest shortfall is {-worst[1]['edgeslim_minus_peer_pt']:.2f} pt against {worst[0]} "
                f"({round(-worst[1]['edgeslim_minus_peer_pt'] * ours['test_images'] / 100)} test images). "
                f"The PTQ peers keep every weight of the FP32 baseline ({base['accuracy']:.2%}, "
                f"{base['test_correct']} correct) and lose at most {peer_loss} test image(s) to rounding. "
                "edgeslim's gap comes from the step no peer takes, pruning: half the channels of every layer are "
                f"removed ({ours.get('params') or 0:,} of {base.get('params') or 0:,} params kept) and the QAT + "
                "distillation fine-tuning recovers most but not all of it (the pipeline's own report, "
                f"test accuracy per stage: {summary['stage_accuracy']}). "
                + (
                    f"Every paired McNemar p-value is above 0.05 (smallest {min_p:.2f}): the gap is within what "
                    "1,001 test images can resolve, but the goal asks for ≥, and on these numbers it is not met."
                    if min_p > 0.05
                    else f"The smallest paired McNemar p-value is {min_p:.2f}: the gap is beyond test-set noise."
                )
            )
        for batch in BATCH_SIZES:
            s = v["speed"][f"b{batch}"]
            lines.append(
                f"- **Speed at batch {batch}: {'MET' if s['met'] else 'NOT MET'}.** The fastest peer is "
                f"{s['fastest_peer']} at {s['fastest_peer_p50_ms']:.3f} ms; edgeslim {s['edgeslim_p50_ms']:.3f} ms "
                f"= {s['speedup']:.2f}x faster (goal {GOAL_SPEEDUP}x). Worst case over the noise, any peer's "
                f"fastest round against edgeslim's slowest: {s['speedup_worst_case']:.2f}x; best case "
                f"{s['speedup_best_case']:.2f}x."
            )
        macs_ratio = (base.get("macs") or 0) / (ours.get("macs") or 1)
        lines += [
            "",
            f"Why the speed-up: every PTQ peer quantizes the unpruned network, so it still runs all "
            f"{(base.get('macs') or 0) / 1e6:.0f} M MACs per image, now in INT8; edgeslim's model runs "
            f"{(ours.get('macs') or 0) / 1e6:.1f} M ({macs_ratio:.1f}x fewer) in the same INT8 kernels. "
            "The static-PTQ peers (ONNX Runtime, Neural Compressor, Olive) land within each other's round spread: "
            "they differ in calibration and granularity, not in the work per image, so which of them is "
            "'fastest' is a coin toss; the worst-case figures above take each peer's best round.",
            "",
            f"Overall: **{'goal met' if v['accuracy_met'] and v['speed_met'] else 'goal NOT met'}** "
            f"(accuracy {'met' if v['accuracy_met'] else 'not met'}, speed {'met' if v['speed_met'] else 'not met'}).",
        ]
    lines += ["", "## How each row was made", ""]
    for r in rows:
        settings = "; ".join(f"{k}: {val}" for k, val in r.get("settings", {}).items())
        extra = " ".join(r.get("notes", []))
        built = (
            ""
            if r["role"] != "peer" or r.get("skipped") or r.get("build_seconds") is None
            else f" Built in {r['build_seconds']:.1f} s{' (cached from an earlier run)' if r.get('cached') else ''}."
        )
        status = f"**Skipped: {r['skipped']}**" if r.get("skipped") else ""
        lines.append(" ".join(x for x in (f"- `{r['method']}` ({r['role']}): {settings}.{built}", extra, status) if x))
    lines += [
        "",
        "## Measurement",
        "",
        f"- Latency: `edgeslim.devices.host.measure_latency`, a fresh Python process per measurement, {args.warmup} "
        f"warm-up + up to {args.runs} timed runs (or {args.max_seconds:.0f} s of timed runs, at least 5: only the "
        "slow models hit this; the runs actually timed are in docs/peers.json), inputs: the first 64 real test "
        f"images tiled to the batch. {args.rounds} rounds; in each round every model is measured at both batch "
        "sizes, the order of models rotates and the batch-size order alternates between rounds, so a noisy "
        "neighbour hits all methods alike. The reported p50 is the median of the round p50s; the brackets give "
        "their min–max.",
        "- Size: bytes of the ONNX file. Accuracy: `edgeslim.engine.evaluate.onnx_accuracy` on the test split.",
        "- Calibration: 256 images from the train split, picked as the pipeline's `quantize` stage picks them "
        "(`torch.randperm` with the run seed), saved to `artifacts/peers/calibration_256.npy` and shared by "
        "ort-static-ptq, Neural Compressor and Olive.",
        "",
        "## Commands behind each peer",
        "",
        "```",
        ".venv/bin/edgeslim run configs/mnist_cnn.yaml        # run first by the script (cached)",
        "# ort-static-ptq / ort-dynamic (project venv, onnxruntime " + facts["onnxruntime"] + "):",
        "quant_pre_process(deploy.onnx, pre.onnx); quantize_static(pre.onnx, out, reader, "
        "quant_format=QuantFormat.QDQ, per_channel=True)",
        "quant_pre_process(deploy.onnx, pre.onnx); quantize_dynamic(pre.onnx, out)",
        "# neural-compressor (project venv): edgeslim.quant.inc.autotune_int8(...) -> export_int8_onnx(...)",
        "# olive (its own venv, created by the script when missing):",
        "python3 -m venv artifacts/peers/olive-venv",
        f"artifacts/peers/olive-venv/bin/python -m pip install --no-deps olive-ai=={OLIVE_VERSION}",
        "artifacts/peers/olive-venv/bin/python -m pip install -c constraints.txt torch==2.13.0 torchmetrics "
        f'"pydantic<2.14" onnxruntime=={facts["onnxruntime"]} onnx=={version("onnx")} onnx_ir onnxscript '
        "opentelemetry-sdk optuna pandas pyyaml questionary transformers hf-xet numpy requests",
        "cd artifacts/peers/olive && OLIVE_DISABLE_TELEMETRY=1 ../olive-venv/bin/olive run --config olive_config.json",
        "```",
        "",
        "Olive's venv: `pip install olive-ai` resolves an unpinned `torch` to the newest CUDA build (a 5.9 GB venv "
        "here), and Olive imports torch when it starts (`olive/model/config/hf_config.py`), so torch cannot be left "
        "out; olive-ai is installed without dependencies and its dependencies with `torch==2.13.0` (the local CPU "
        "wheel, constrained) and the project's onnxruntime/onnx, plus `requests`, which Olive's telemetry module "
        "imports without declaring it. Telemetry is switched off (`OLIVE_DISABLE_TELEMETRY=1`).",
        "",
        "## Timings",
        "",
        "Wall time (s): "
        + ", ".join(f"{k.replace('_', ' ')} {val:.1f}" for k, val in summary["timings_s"].items())
        + ". The `edgeslim run` step: "
        + "; ".join(f"{status}: {', '.join(names)}" for status, names in summary["stage_status"].items())
        + " (stages re-run when their inputs or the code they depend on changed). Every figure is also in "
        "docs/peers.json.",
    ]
    text = "\n".join(lines) + "\n"
    (args.docs / "peers.md").write_text(text)
    return text


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/mnist_cnn.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--peers-dir", type=Path, default=ROOT / "artifacts/peers")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time budget per measurement's timed runs")
    parser.add_argument("--force", action="store_true", help="rebuild every peer model")
    parser.add_argument("--inc-wait", type=float, default=0.0, help="seconds to wait for edgeslim.quant.inc")
    args = parser.parse_args()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    load_start = os.getloadavg()[0]

    log(f"edgeslim run {rel(args.config)} (cached stages are reused)")
    t = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/edgeslim"), "run", str(args.config), "--out", str(args.out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        log(f"edgeslim run failed (exit {proc.returncode})")
        return proc.returncode
    timings["edgeslim_run"] = time.perf_counter() - t

    config = load_config(args.config)
    run_dir = args.out / config.name
    report = json.loads((run_dir / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    last = report["stages"][-1]
    baseline_onnx = run_dir / stages["baseline"]["dir"] / "deploy.onnx"
    final_onnx = run_dir / last["dir"] / "model.onnx"
    base_metrics, final_metrics = stages["baseline"]["metrics"], last["metrics"]

    data = load_data(config.data)
    calibration = pick_calibration(data, config.seed)
    peers_dir = args.peers_dir
    peers_dir.mkdir(parents=True, exist_ok=True)
    calibration_npy = peers_dir / f"calibration_{CALIBRATION_SAMPLES}.npy"
    np.save(calibration_npy, calibration)
    calib_sha = sha256_file(calibration_npy)
    base_sha = sha256_file(baseline_onnx)
    ort_versions = {"onnxruntime": version("onnxruntime"), "onnx": version("onnx")}

    ours = Method(
        "edgeslim",
        "ours",
        "pipeline: 50% channel pruning + QAT + distillation → INT8",
        final_onnx,
        settings={"config": str(rel(args.config)), "model": str(rel(final_onnx))},
    )
    reference = Method(
        "baseline-fp32",
        "reference",
        "the unpruned FP32 ONNX every peer starts from",
        baseline_onnx,
        settings={"model": str(rel(baseline_onnx))},
    )
    static = Method("ort-static-ptq", "peer", "ONNX Runtime static PTQ (QDQ, per-channel, MinMax)")
    inc = Method("neural-compressor", "peer", "Intel Neural Compressor accuracy-aware PTQ (torch → QDQ ONNX)")
    dynamic = Method("ort-dynamic", "peer", "ONNX Runtime dynamic quantization")
    olive = Method("olive", "peer", "Microsoft Olive OnnxStaticQuantization workflow")

    t = time.perf_counter()
    common = {"recipe": RECIPE_VERSION, "baseline_onnx": base_sha, "calibration": calib_sha, **ort_versions}
    cached_build(
        static, peers_dir / static.name, common, build_ort_static(static, baseline_onnx, calibration), args.force
    )
    cached_build(dynamic, peers_dir / dynamic.name, common, build_ort_dynamic(dynamic, baseline_onnx), args.force)
    olive_venv = peers_dir / "olive-venv"
    t_venv = time.perf_counter()
    try:
        _, olive_versions = ensure_olive_venv(olive_venv)
    except Skipped as exc:
        olive.skipped = str(exc)
        olive.settings = {"workflow": f"OnnxStaticQuantization via `olive run` in {rel(olive_venv)}"}
        log(f"olive: skipped: {exc}")
    else:
        timings["olive_venv_check_or_setup"] = time.perf_counter() - t_venv
        olive_key = {**common, "olive_venv": olive_versions, "user_script": sha256_file(USER_SCRIPT)}
        olive_build = build_olive(olive, baseline_onnx, calibration_npy, olive_venv)
        cached_build(olive, peers_dir / olive.name, olive_key, olive_build, args.force)
    safetensors = run_dir / stages["baseline"]["dir"] / "model.safetensors"
    inc_key = {
        **common,
        "baseline_weights": sha256_file(safetensors) if safetensors.is_file() else None,
        "inc_backend": sha256_file(ROOT / "pipeline/quant/inc.py")
        if (ROOT / "pipeline/quant/inc.py").is_file()
        else None,
        "versions": {p: version(p) for p in ("neural_compressor", "torch", "torchao")},
    }
    cached_build(
        inc,
        peers_dir / inc.name,
        inc_key,
        build_inc(inc, run_dir, stages["baseline"]["dir"], args.config, data, calibration, args.inc_wait),
        args.force,
    )
    timings["peer_builds_incl_olive_venv"] = time.perf_counter() - t

    methods = [ours, static, inc, dynamic, olive, reference]
    measured = {m.name: m.path for m in methods if m.path is not None and not m.skipped}

    t = time.perf_counter()
    batch = config.measure.eval_batch_size
    accuracy = {name: onnx_accuracy(path, data, batch) for name, path in measured.items()}
    preds = {name: predictions(path, data, batch) for name, path in measured.items()}
    labels = data.test.tensors[1].numpy()
    timings["accuracy"] = time.perf_counter() - t
    log("accuracy: " + ", ".join(f"{n} {a:.2%}" for n, a in accuracy.items()))

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = latency_inputs(data, Path(tmp))
        latency = measure_rounds(measured, inputs, args.rounds, args.runs, args.warmup, args.max_seconds)
    timings["latency"] = time.perf_counter() - t

    rows: list[dict[str, Any]] = []
    for m in methods:
        row: dict[str, Any] = {
            "method": m.name,
            "role": m.role,
            "what": m.what,
            "size_bytes": None,
            "latency_ms_p50_b1": None,
            "latency_ms_p50_b32": None,
            "accuracy": None,
            "skipped": m.skipped,
        }
        if m.name in measured:
            path = measured[m.name]
            right = preds[m.name] == labels
            row.update(size_bytes=path.stat().st_size, accuracy=accuracy[m.name])
            row.update(test_correct=int(right.sum()), test_images=len(labels))
            for b in BATCH_SIZES:
                p50s = [x["p50"] for x in latency[m.name][b]]
                row[f"latency_ms_p50_b{b}"] = statistics.median(p50s)
                row[f"latency_ms_spread_b{b}"] = [min(p50s), max(p50s)]
                row[f"round_p50_ms_b{b}"] = [round(x, 5) for x in p50s]
                row[f"timed_runs_b{b}"] = [x["runs"] for x in latency[m.name][b]]
            row["model"] = str(rel(path))
            row["model_sha256"] = sha256_file(path)
        metrics = final_metrics if m is ours else base_metrics  # peers keep the baseline's params and MACs
        row.update(params=metrics.get("params"), macs=metrics.get("macs"))
        row.update(settings=m.settings, notes=m.notes, build_seconds=m.build_seconds, cached=m.cached)
        row.update(m.extras)
        rows.append(row)

    our_right = preds["edgeslim"] == labels
    rows[0]["paired_vs_peers"] = {}
    for r in rows[1:]:
        if r["method"] in preds:
            peer_right = preds[r["method"]] == labels
            b, c = int((our_right & ~peer_right).sum()), int((~our_right & peer_right).sum())
            rows[0]["paired_vs_peers"][r["method"]] = {
                "edgeslim_only_right": b,
                "peer_only_right": c,
                "mcnemar_p": exact_sign_test(b, c),
            }

    timings["total"] = time.perf_counter() - started
    summary = {
        "verdict": verdict(rows),
        "timings_s": timings,
        "load_average": [load_start, os.getloadavg()[0]],
        "stage_status": {
            status: [s["name"] for s in report["stages"] if s.get("status") == status]
            for status in dict.fromkeys(s.get("status") for s in report["stages"])
        },
        "stage_accuracy": ", ".join(
            f"{s['name']} {s['metrics']['accuracy']:.2%}" for s in report["stages"] if s.get("metrics")
        ),
    }
    facts = device_facts()
    rows[0]["run"] = {
        "command": f".venv/bin/python bench/peers.py --rounds {args.rounds} --runs {args.runs} --warmup {args.warmup}",
        "device": facts,
        "rounds": args.rounds,
        "runs": args.runs,
        "warmup": args.warmup,
        "max_seconds": args.max_seconds,
        "threads": 1,
        **summary,
    }
    args.docs.mkdir(exist_ok=True)
    (args.docs / "peers.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(write_docs(rows, summary, facts, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
