"""MiniLM sentiment: edgeslim's transformer vs FP32 and vs Hugging Face optimum and Microsoft Olive (issue 14).

The reference case is a pipeline run of ``configs/minilm_sentiment_slim.yaml`` (run folder
``artifacts/minilm_sentiment``; ``bench/minilm_sentiment.py --config configs/minilm_sentiment_slim.yaml`` makes
it): the pretrained all-MiniLM-L6-v2 fine-tuned on the built-in ``rotten_tomatoes`` reviews (its ``train`` /
``baseline`` stages: the teacher), then pruned, distilled, exported and quantized. This script reads that run
folder and measures, side by side in one run:

* ``teacher-pytorch``: the baseline stage's model in PyTorch (the run's model loader; FP32, eager);
* ``fp32-onnx``: the same teacher as FP32 ONNX, the baseline stage's deployable file (edgeslim's torch exporter,
  ``edgeslim.export.onnx_io.export_onnx``: ``torch.onnx.export(dynamo=True)``, opset 20);
* ``optimum``: the teacher saved as a Hugging Face folder (``save_pretrained`` of the inner transformers model
  plus the tokenizer files), exported by optimum-onnx (``optimum.exporters.onnx.main_export``, task
  text-classification, local files only) and quantized by ``optimum.onnxruntime.ORTQuantizer`` with
  ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)`` (dynamic INT8);
* ``olive``: Microsoft Olive's transformer workflow from the same Hugging Face folder (``OnnxConversion`` ->
  ``OrtTransformersOptimization`` (bert, heads and hidden size from the config) -> ``OnnxDynamicQuantization``),
  run with ``olive run`` in its own venv (``artifacts/peers/olive-venv``, made as ``bench/peers.py`` makes it);
* ``edgeslim``: the run's final model, the ``quantize`` stage's deployable ONNX file.

For every sequence length L (``--seq``, default 32 128 256) the test reviews are tokenized to exactly L tokens
(longer ones truncated, shorter ones padded; the attention mask marks the padding): accuracy on the test split
(ONNX Runtime, or PyTorch for the teacher), and latency p50 at batch 1 with 1 thread on the first test review at
that length, one fresh process per measurement (``edgeslim.devices.host.measure_latency``; the teacher in a
PyTorch worker started from this script), all methods and lengths interleaved over ``--rounds`` rounds; the
tables give the median of the round p50s and their min-max. Size: bytes of the ONNX file (plus external data).
Peer models are cached under ``artifacts/transformer_bench/<run name>/`` (rebuilt when their inputs change).

Writes ``docs/transformer.json`` (a list of objects, one per method and sequence length: ``method``,
``seq_len``, ``accuracy``, ``size_bytes``, ``latency_ms_p50``, ...; the first also holds ``run``: the command,
machine, settings and the goal check) and ``docs/transformer.md``. Usage::

    nice -n 19 .venv/bin/python bench/transformer.py                        # the real measurement (docs/)
    nice -n 19 .venv/bin/python bench/transformer.py --smoke --run artifacts/minilm_sentiment_n120_len32_ep1

``--smoke``: 2 rounds of few runs, at most 48 test reviews, output into the cache folder, never docs/.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

METHODS = ("teacher-pytorch", "fp32-onnx", "optimum", "olive", "edgeslim")
PEERS = ("optimum", "olive")
WHAT = {
    "teacher-pytorch": "the fine-tuned teacher (baseline stage), FP32 PyTorch",
    "fp32-onnx": "the teacher as FP32 ONNX (edgeslim's torch exporter)",
    "optimum": "optimum-onnx export + ORTQuantizer dynamic INT8 (avx512_vnni preset, per-channel)",
    "olive": "Olive: OnnxConversion + OrtTransformersOptimization + OnnxDynamicQuantization",
    "edgeslim": "edgeslim's pipeline: pruned + distilled + vocabulary-pruned, fused, quantized",
}
RECIPE_VERSION = 2  # bump to rebuild every cached peer model
OPSET = 18  # optimum's export and Olive's conversion (both the TorchScript exporter); optimum's minimum for BERT
EVAL_BATCH = 64
LATENCY_SAMPLES = 64  # the first test reviews saved for the latency worker (batch 1 takes the first)
GOAL_SEQ = 128
GOAL = {"speedup_vs_fp32": 4.0, "accuracy_drop_pt": 1.0, "speedup_vs_peer": 1.5, "size_ratio": 4.0}
SMOKE = {"rounds": 2, "runs": 10, "warmup": 2, "max_seconds": 1.0, "test_limit": 48}
TASK = "text-classification"


def log(message: str) -> None:
    print(f"[transformer {time.strftime('%H:%M:%S')}] {message}", flush=True)


def rel(path: Path) -> str:
    full = Path(path).resolve()
    return str(full.relative_to(ROOT)) if full.is_relative_to(ROOT) else str(full)


def version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------- the PyTorch worker


def torch_worker(spec_path: str, out_path: str) -> int:
    """Time the teacher in PyTorch in this (fresh) process: the Hugging Face folder's model, the inputs' first
    sample, ``threads`` threads; the same stopping rule as edgeslim's ONNX Runtime runner."""
    spec = json.loads(Path(spec_path).read_text())
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], local_files_only=True).eval()
    init_ms = (time.perf_counter() - start) * 1e3
    with np.load(spec["inputs"], allow_pickle=False) as f:
        feed = {k: torch.from_numpy(f[k][:1].astype(np.int64)) for k in ("input_ids", "attention_mask")}
    samples: list[float] = []
    with torch.inference_mode():
        for _ in range(spec["warmup"] + 1):
            model(**feed)
        deadline = time.perf_counter() + spec["max_seconds"] if spec["max_seconds"] else None
        for _ in range(spec["runs"]):
            start = time.perf_counter()
            model(**feed)
            samples.append((time.perf_counter() - start) * 1e3)
            if deadline is not None and time.perf_counter() > deadline and len(samples) >= 5:
                break
    arr = np.asarray(samples)
    latency = {"p50": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "mean": float(arr.mean())}
    result = {"latency_ms": latency, "runs": len(samples), "session_init_ms": init_ms, "torch": torch.__version__}
    Path(out_path).write_text(json.dumps(result))
    return 0


def measure_torch(hf_dir: Path, inputs: Path, threads: int, warmup: int, runs: int, max_seconds: float) -> dict:
    from edgeslim.engine.children import run_child

    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(
            json.dumps(
                {
                    "model": str(hf_dir),
                    "inputs": str(inputs),
                    "threads": threads,
                    "warmup": warmup,
                    "runs": runs,
                    "max_seconds": max_seconds,
                }
            )
        )
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", str(spec), str(out)]
        proc = run_child(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"PyTorch latency worker failed: {last}")
        return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------- the run and its data


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run's config, the baseline (teacher) and final (quantize) stages and their files."""
    import edgeslim

    result = edgeslim.open_run(run_dir)
    config = edgeslim.parse_config(result.report.config)
    by_name = {s.name: s for s in result.stages}
    for needed in ("baseline", "quantize"):
        if needed not in by_name or by_name[needed].status == "failed" or by_name[needed].metrics is None:
            raise SystemExit(
                f"{rel(run_dir)}: the run has no finished '{needed}' stage (stages: "
                f"{', '.join(f'{s.dir} {s.status}' for s in result.stages)})"
            )
    baseline, final = by_name["baseline"], by_name["quantize"]
    manifest = json.loads((run_dir / baseline.dir / "manifest.json").read_text())
    return {
        "result": result,
        "config": config,
        "baseline": baseline,
        "final": final,
        "baseline_onnx": result.model_file(baseline.dir),
        "final_onnx": result.model_file(final.dir),
        "deliverable": result.deliverable,
        "baseline_weights_sha256": manifest["files"].get("model.safetensors"),
        "data_fingerprint": result.report.data_fingerprint,
    }


def split_at(spec: Any, length: int, limit: int | None) -> dict[str, Any]:
    """The run's data re-tokenized to ``length`` tokens: the test split (and the loader's example)."""
    from edgeslim.data.datasets import load_data

    data = load_data(spec.model_copy(update={"max_length": length}))
    inputs, labels = data.test.tensors
    n = len(labels) if limit is None else min(limit, len(labels))
    ids = inputs["input_ids"][:n].numpy().astype(np.int64)
    mask = inputs["attention_mask"][:n].numpy().astype(np.int64)
    return {"data": data, "ids": ids, "mask": mask, "labels": labels[:n].numpy(), "fingerprint": data.fingerprint}


def feeds_for(names: list[str], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds by input name; ``token_type_ids`` (optimum's and Olive's BERT exports) get zeros,
    as the pipeline's model passes none (transformers then uses zeros)."""
    out = {}
    for name in names:
        if name == "input_ids":
            out[name] = ids
        elif name == "attention_mask":
            out[name] = mask
        elif name == "token_type_ids":
            out[name] = np.zeros_like(ids)
        else:
            raise ValueError(f"unexpected model input '{name}'")
    return out


# --------------------------------------------------------------------------------------------- models


def onnx_size(path: Path) -> int:
    """Bytes of the ONNX file plus every external data file it names."""
    from edgeslim.export.onnx_io import load_onnx

    proto = load_onnx(path, external_data=False)
    files = {
        entry.value
        for t in proto.graph.initializer
        for entry in t.external_data
        if entry.key == "location" and t.data_location == 1  # onnx.TensorProto.EXTERNAL
    }
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def sequence_axis(path: Path) -> list[str | int]:
    """The sequence dimension of each input (a name when dynamic, a number when fixed)."""
    from edgeslim.export.onnx_io import load_onnx

    proto = load_onnx(path, external_data=False)
    dims = []
    for i in proto.graph.input:
        shape = i.type.tensor_type.shape.dim
        if len(shape) >= 2:
            dims.append(shape[1].dim_param or shape[1].dim_value)
    return dims


def key_of(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def build_hf_folder(folder: Path, teacher: Any, tokenizer_dir: Path, key: dict[str, Any], force: bool) -> dict:
    """The teacher as a Hugging Face folder (weights, config, tokenizer); returns its meta (cached)."""
    from edgeslim.engine.store import sha256_file

    meta_path = folder / "edgeslim-meta.json"
    digest = key_of(key)
    if not force and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        weights = folder / "model.safetensors"
        if meta.get("key") == digest and weights.is_file() and meta.get("weights_sha256") == sha256_file(weights):
            log(f"hf folder: cached ({rel(folder)})")
            return meta
    log("hf folder: saving the teacher with save_pretrained ...")
    from transformers import AutoTokenizer

    shutil.rmtree(folder, ignore_errors=True)
    part = folder.with_name(folder.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    teacher.hf.save_pretrained(str(part), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True).save_pretrained(str(part))
    part.rename(folder)
    meta = {"key": digest, "inputs": key, "weights_sha256": sha256_file(folder / "model.safetensors")}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def hf_parity(folder: Path, teacher: Any, ids: np.ndarray, mask: np.ndarray) -> float:
    """Max |logit difference| between the saved folder's model and the teacher on a few reviews."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    x = {"input_ids": torch.from_numpy(ids[:8]), "attention_mask": torch.from_numpy(mask[:8])}
    with torch.inference_mode():
        a = model(**x).logits
        b = teacher(x["input_ids"], x["attention_mask"])
    return float((a - b).abs().max())


class Method:
    """One row family of the tables: a model file (or the PyTorch teacher) and how it was made."""

    def __init__(self, name: str, path: Path | None = None, settings: dict[str, Any] | None = None) -> None:
        self.name = name
        self.path = path
        self.settings: dict[str, Any] = settings or {}
        self.notes: list[str] = []
        self.skipped: str | None = None
        self.build_seconds: float | None = None
        self.cached = False


class Skipped(Exception):
    """A peer that could not be built here; the message is the reason written into its rows."""


def cached_model(method: Method, folder: Path, key: dict[str, Any], build: Callable[[Path], None], force: bool) -> None:
    """``folder/model.onnx`` made by ``build`` unless ``folder/meta.json`` records the same inputs."""
    from edgeslim.engine.store import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    key = {**key, "recipe_settings": dict(method.settings), "opset": OPSET}  # the recipe is part of the key
    digest = key_of(key)
    model, meta_path = folder / "model.onnx", folder / "meta.json"
    if not force and model.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == digest and meta.get("model_sha256") == sha256_file(model):
            method.path, method.cached, method.build_seconds = model, True, meta.get("build_seconds")
            method.settings.update(meta.get("settings") or {})
            method.notes = meta.get("notes") or []
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
    except Exception as exc:  # a peer tool's failure is a finding, not the end of the measurement
        method.skipped = f"building failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        log(f"{method.name}: {method.skipped}")
        return
    method.build_seconds = time.perf_counter() - start
    method.path = model
    meta = {
        "key": digest,
        "inputs": key,
        "model_sha256": sha256_file(model),
        "build_seconds": method.build_seconds,
        "settings": method.settings,
        "notes": method.notes,
    }
    meta_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    log(f"{method.name}: built in {method.build_seconds:.1f} s")


def build_optimum(method: Method, hf_dir: Path) -> Callable[[Path], None]:
    method.settings.update(
        {
            "export": f"optimum.exporters.onnx.main_export(hf folder, task='{TASK}', library_name='transformers', "
            f"opset={OPSET}, local_files_only=True)",
            "quantize": "ORTQuantizer.from_pretrained(export, file_name='model.onnx').quantize("
            "AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))",
            "versions": {p: version(p) for p in ("optimum", "optimum-onnx", "transformers", "onnxruntime")},
        }
    )

    def build(out: Path) -> None:
        from optimum.exporters.onnx import main_export
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            export, quant = Path(tmp) / "export", Path(tmp) / "quantized"
            main_export(
                str(hf_dir),
                output=export,
                task=TASK,
                opset=OPSET,
                library_name="transformers",
                local_files_only=True,
            )
            fp32 = export / "model.onnx"
            shutil.copyfile(fp32, out.with_name("fp32-export.onnx"))
            qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
            quantizer = ORTQuantizer.from_pretrained(export, file_name="model.onnx")
            quantizer.quantize(save_dir=quant, quantization_config=qconfig)
            produced = quant / "model_quantized.onnx"
            os.replace(produced, out)
            method.settings["quantization_config"] = {
                k: str(v)
                for k, v in qconfig.__dict__.items()
                if k
                in (
                    "format",
                    "mode",
                    "activations_dtype",
                    "weights_dtype",
                    "per_channel",
                    "reduce_range",
                    "weights_symmetric",
                    "activations_symmetric",
                    "operators_to_quantize",
                )
            }
        method.notes = [
            "optimum's FP32 export is kept beside it as fp32-export.onnx (not measured)",
        ]

    return build


def olive_env() -> dict[str, str]:
    return {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}


def build_olive(method: Method, hf_dir: Path, venv: Path, heads: int, hidden: int) -> Callable[[Path], None]:
    method.settings.update(
        {
            "workflow": f"HfModel (the teacher's folder, task {TASK}, load_kwargs attn_implementation=eager as "
            "Olive's CLI sets it: with transformers' default SDPA attention ONNX Runtime's optimizer fuses no "
            f"Attention) -> OnnxConversion (target_opset {OPSET}) -> "
            f"OrtTransformersOptimization (model_type bert, num_heads {heads}, hidden_size {hidden}) -> "
            "OnnxDynamicQuantization (Olive's defaults: int8 weights, per-tensor, quant_preprocess)",
            "execution_provider": "CPUExecutionProvider",
            "venv": rel(venv),
        }
    )

    def build(out: Path) -> None:
        import peers  # bench/peers.py: Olive's venv, made the same way for every bench script

        try:
            olive, versions = peers.ensure_olive_venv(venv)
        except peers.Skipped as exc:
            raise Skipped(str(exc)) from None
        method.settings["olive_venv_versions"] = versions
        work = out.parent
        for sub in ("out", "cache"):
            shutil.rmtree(work / sub, ignore_errors=True)
        config = {
            "input_model": {
                "type": "HfModel",
                "model_path": str(hf_dir),
                "task": TASK,
                "load_kwargs": {"attn_implementation": "eager"},  # as Olive's own CLI loads HF models
            },
            "systems": {
                "local_system": {
                    "type": "LocalSystem",
                    "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
                }
            },
            "passes": {
                "conversion": {"type": "OnnxConversion", "target_opset": OPSET},
                "transformers_optimization": {
                    "type": "OrtTransformersOptimization",
                    "model_type": "bert",
                    "num_heads": heads,
                    "hidden_size": hidden,
                },
                "quantization": {"type": "OnnxDynamicQuantization"},
            },
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
                timeout=3600,
            )
        produced = work / "out/model.onnx"
        if proc.returncode != 0 or not produced.is_file():
            tail = (work / "olive.log").read_text().strip().splitlines()[-1:] or ["no output"]
            raise Skipped(f"olive run failed (exit {proc.returncode}): {tail[0][:300]}")
        import onnx

        from edgeslim.export.onnx_io import load_onnx

        onnx.save(load_onnx(produced, "Olive's model"), str(out))  # one file, weights inside
        method.notes = [f"olive-ai {versions.get('olive-ai')} in its own venv; config: {rel(config_path)}"]

    return build


# --------------------------------------------------------------------------------------------- measuring


def onnx_predictions(path: Path, ids: np.ndarray, mask: np.ndarray, threads: int, exact_int8: bool) -> np.ndarray:
    from edgeslim.export.onnx_io import open_session

    session = open_session(path, threads=threads, graph_optimization="all", exact_int8=exact_int8)
    names = [i.name for i in session.get_inputs()]
    out = []
    for i in range(0, len(ids), EVAL_BATCH):
        out.append(session.run(None, feeds_for(names, ids[i : i + EVAL_BATCH], mask[i : i + EVAL_BATCH]))[0])
    return np.concatenate(out).argmax(1)


def torch_predictions(teacher: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(ids), EVAL_BATCH):
            x, m = torch.from_numpy(ids[i : i + EVAL_BATCH]), torch.from_numpy(mask[i : i + EVAL_BATCH])
            out.append(teacher(x, m).numpy())
    return np.concatenate(out).argmax(1)


def exact_sign_test(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    import math

    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def measure_rounds(
    methods: dict[str, Method], hf_dir: Path, inputs: dict[int, Path], args: argparse.Namespace
) -> tuple[dict[str, dict[int, list[dict[str, Any]]]], dict[str, dict[int, str]]]:
    """Round p50s per method and length: every round times each method at each length in a fresh process; the
    method order rotates every round and the length order alternates."""
    from edgeslim.devices.host import measure_latency

    names = list(methods)
    out: dict[str, dict[int, list[dict[str, Any]]]] = {n: {L: [] for L in inputs} for n in names}
    errors: dict[str, dict[int, str]] = {n: {} for n in names}
    lengths = list(inputs)
    for r in range(args.rounds):
        start = time.perf_counter()
        order = names[r % len(names) :] + names[: r % len(names)]
        for L in lengths if r % 2 == 0 else lengths[::-1]:
            for name in order:
                if L in errors[name]:
                    continue
                try:
                    if name == "teacher-pytorch":
                        res = measure_torch(hf_dir, inputs[L], 1, args.warmup, args.runs, args.max_seconds)
                    else:
                        res = measure_latency(
                            methods[name].path,
                            threads=1,
                            batch_size=1,
                            warmup=args.warmup,
                            runs=args.runs,
                            max_seconds=args.max_seconds,
                            graph_optimization="all",
                            inputs=inputs[L],
                            exact_int8=args.exact_int8,
                        )
                except Exception as exc:
                    errors[name][L] = f"{type(exc).__name__}: {exc}"[:300]
                    log(f"latency {name} seq {L}: {errors[name][L]}")
                    continue
                out[name][L].append({"p50": res["latency_ms"]["p50"], "runs": res["runs"]})
        log(
            f"latency round {r + 1}/{args.rounds} ({time.perf_counter() - start:.0f} s): "
            + "; ".join(
                f"{n} " + "/".join(f"{out[n][L][-1]['p50']:.2f}" if out[n][L] else "-" for L in lengths) for n in names
            )
            + f" ms (seq {'/'.join(map(str, lengths))})"
        )
    return out, errors


# --------------------------------------------------------------------------------------------- the goal


def verdict(rows: list[dict[str, Any]], seq: int) -> dict[str, Any]:
    """The issue's goal at sequence ``seq``, from the rows."""
    at = {r["method"]: r for r in rows if r["seq_len"] == seq and r.get("latency_ms_p50") is not None}
    at_acc = {r["method"]: r for r in rows if r["seq_len"] == seq and r.get("accuracy") is not None}
    ours, fp32, teacher = at.get("edgeslim"), at.get("fp32-onnx"), at_acc.get("teacher-pytorch")
    out: dict[str, Any] = {
        "seq_len": seq,
        "goal": f"at sequence {seq}: edgeslim >= {GOAL['speedup_vs_fp32']}x faster than fp32-onnx within "
        f"{GOAL['accuracy_drop_pt']} point of the fine-tuned teacher's accuracy; >= {GOAL['speedup_vs_peer']}x "
        f"faster than the faster of optimum and Olive at equal or better accuracy; >= {GOAL['size_ratio']}x "
        "smaller than the FP32 ONNX file",
    }
    if ours is None or fp32 is None or teacher is None or ours.get("accuracy") is None:
        out.update(met=False, missing="edgeslim, fp32-onnx or teacher-pytorch has no numbers at this length")
        return out
    spd = fp32["latency_ms_p50"] / ours["latency_ms_p50"]
    drop = 100 * (teacher["accuracy"] - ours["accuracy"])
    out["vs_fp32"] = {
        "speedup": spd,
        "speedup_worst_case": fp32["latency_ms_spread"][0] / ours["latency_ms_spread"][1],
        "speedup_met": spd >= GOAL["speedup_vs_fp32"],
        "teacher_accuracy": teacher["accuracy"],
        "edgeslim_accuracy": ours["accuracy"],
        "drop_pt": drop,
        "accuracy_met": drop <= GOAL["accuracy_drop_pt"] + 1e-9,
    }
    peers = [at[p] for p in PEERS if p in at and at[p].get("accuracy") is not None]
    if peers:
        best = min(peers, key=lambda p: p["latency_ms_p50"])
        s = best["latency_ms_p50"] / ours["latency_ms_p50"]
        out["vs_peer"] = {
            "peers_measured": [p["method"] for p in peers],
            "faster_peer": best["method"],
            "faster_peer_p50_ms": best["latency_ms_p50"],
            "edgeslim_p50_ms": ours["latency_ms_p50"],
            "speedup": s,
            "speedup_worst_case": min(p["latency_ms_spread"][0] for p in peers) / ours["latency_ms_spread"][1],
            "speedup_met": s >= GOAL["speedup_vs_peer"],
            "faster_peer_accuracy": best["accuracy"],
            "accuracy_met": ours["accuracy"] >= best["accuracy"] - 1e-12,
            "accuracy_vs_each_pt": {p["method"]: 100 * (ours["accuracy"] - p["accuracy"]) for p in peers},
        }
    else:
        out["vs_peer"] = {"peers_measured": [], "speedup_met": False, "accuracy_met": False}
    ratio = fp32["size_bytes"] / ours["size_bytes"]
    out["size"] = {
        "fp32_bytes": fp32["size_bytes"],
        "edgeslim_bytes": ours["size_bytes"],
        "ratio": ratio,
        "met": ratio >= GOAL["size_ratio"],
    }
    parts = [
        out["vs_fp32"]["speedup_met"],
        out["vs_fp32"]["accuracy_met"],
        out["vs_peer"]["speedup_met"],
        out["vs_peer"]["accuracy_met"],
        out["size"]["met"],
    ]
    out["met"] = all(parts)
    return out


# --------------------------------------------------------------------------------------------- the page


def fmt_ms(value: float | None, spread: list[float] | None) -> str:
    if value is None or spread is None:
        return "—"
    d = 2 if value < 100 else 1
    return f"{value:.{d}f} ({spread[0]:.{d}f}–{spread[1]:.{d}f})"


def fmt_size(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.1f} MB"


def met(flag: bool) -> str:
    return "MET" if flag else "NOT MET"


def int8_line(meta: dict[str, Any]) -> str:
    """Which INT8 kernels ran, and which models have 8-bit weights that saturate ONNX Runtime's default ones."""
    needing = [k for k, v in meta["needs_exact_int8"].items() if v]
    if meta["exact_int8"]:
        return (
            "- INT8 kernels: ONNX Runtime's exact INT8 mode (`session.x64quantprecision`, as the pipeline measures "
            f"on x86 without VNNI) for the models that need it: {', '.join(needing) or 'none'}; the others as ORT "
            "runs them by default."
        )
    text = (
        "- INT8 kernels: every model as ONNX Runtime runs it by default (no session option), as each tool's users "
        "get it. "
    )
    if needing:
        text += (
            f"On x86 CPUs without VNNI (this one) the default U8S8 kernels can saturate on 8-bit weights: "
            f"{', '.join(needing)} have such weights (7-bit weights, reduce_range, do not saturate). The pipeline "
            "itself measures such models in ONNX Runtime's exact mode (`session.x64quantprecision`, slower kernels); "
            "their test accuracy in that mode is in docs/transformer.json "
            "(`accuracy_exact_int8`): "
            + "; ".join(f"{r['method']} seq {r['seq_len']}: {r['accuracy_exact_int8']:.2%}" for r in meta["rows_exact"])
            + ". `--exact-int8` times them that way."
        )
    else:
        text += (
            "No model needs ONNX Runtime's exact INT8 mode on this CPU (on VNNI and ARM CPUs the default kernels are "
            "exact; on x86 without VNNI, 7-bit weights keep them so)."
        )
    return text


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    dev, v = meta["device"], meta["verdict"]
    lines = [
        "# MiniLM sentiment: edgeslim vs FP32, optimum and Olive",
        "",
        "One run, one model, one data set: the pretrained all-MiniLM-L6-v2 fine-tuned on the built-in "
        f"`rotten_tomatoes` reviews, the `train`/`baseline` stages of the pipeline run `{meta['run_name']}` "
        f"(folder `{meta['run_dir']}`, made by `bench/minilm_sentiment.py --config "
        "configs/minilm_sentiment_slim.yaml`; its `report.json` holds the resolved config), is the teacher every "
        "row starts from; edgeslim's row is the same run's final model (its `quantize` stage).",
        "",
        f"Command ({meta['date']}; wall time {meta['timings_s']['total']:.0f} s):",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {dev.get('cpu')}, {dev.get('logical_cores')} logical cores "
        f"({', '.join(dev.get('isa_flags') or []) or 'no AVX-512/VNNI flags'}), {dev.get('os')}, Python "
        f"{dev.get('python')}, onnxruntime {dev.get('onnxruntime')}, torch {meta['versions']['torch']}, "
        f"transformers {meta['versions']['transformers']}, optimum {meta['versions']['optimum']} + optimum-onnx "
        f"{meta['versions']['optimum-onnx']}. A shared machine (load average {meta['load_average'][0]:.2f} at the "
        f"start, {meta['load_average'][1]:.2f} at the end): the rounds are interleaved and their spread is shown.",
        "",
        f"Data: {meta['test_samples']} test reviews (the run's test split"
        + (f", the first {meta['test_samples']} only: a smoke check" if meta["test_limited"] else "")
        + f"). Each length L re-tokenizes them to exactly L tokens: the longest review has {meta['longest_tokens']} "
        f"tokens, so at 32 {meta['truncated_at_32']} of them are truncated (accuracy at 32 is a different task "
        "input), and at 128 and 256 every review is padded (the attention mask hides the padding: the same "
        "predictions up to rounding, more work per inference). "
        + (
            "The split at the run's own length has the run's data fingerprint."
            if meta["fingerprint_matches"]
            else "**The split's fingerprint at the run's length differs from the run's.**"
        ),
        "",
    ]
    seqs = sorted({r["seq_len"] for r in rows})
    for L in seqs:
        at = {r["method"]: r for r in rows if r["seq_len"] == L}
        fp32, ours, teacher = at.get("fp32-onnx"), at.get("edgeslim"), at.get("teacher-pytorch")
        lines += [
            f"## Sequence {L}",
            "",
            "| method | size | x smaller than fp32-onnx | test accuracy (correct/n) | Δ vs teacher (pt) | "
            "p50 ms (round min–max) | x faster than fp32-onnx | edgeslim x faster than it |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in METHODS:
            r = at.get(m)
            if r is None:
                continue
            if r.get("skipped"):
                lines.append(f"| {m} | — | — | — | — | — | — | skipped: {r['skipped']} |")
                continue
            acc = r.get("accuracy")
            acc_s = f"{acc:.2%} ({r['test_correct']}/{r['test_samples']})" if acc is not None else "—"
            delta = (
                f"{100 * (acc - teacher['accuracy']):+.2f}"
                if acc is not None and teacher and teacher.get("accuracy") is not None and m != "teacher-pytorch"
                else ""
            )
            size = r.get("size_bytes")
            smaller = f"{fp32['size_bytes'] / size:.1f}x" if size and fp32 and fp32.get("size_bytes") else "—"
            p50 = r.get("latency_ms_p50")
            faster = f"{fp32['latency_ms_p50'] / p50:.2f}x" if p50 and fp32 and fp32.get("latency_ms_p50") else "—"
            ours_faster = (
                f"{p50 / ours['latency_ms_p50']:.2f}x"
                if p50 and ours and ours.get("latency_ms_p50") and m != "edgeslim"
                else ""
            )
            err = f" ({r['latency_error']})" if r.get("latency_error") else ""
            name = f"**{m}**" if m == "edgeslim" else m
            lines.append(
                f"| {name} | {fmt_size(size)} | {smaller} | {acc_s} | {delta} | "
                f"{fmt_ms(p50, r.get('latency_ms_spread'))}{err} | {faster} | {ours_faster} |"
            )
        lines.append("")
    lines += [
        "## Speed-ups of edgeslim's model",
        "",
        "| seq | vs fp32-onnx | vs teacher-pytorch | vs the faster peer (which) | Δ accuracy vs teacher (pt) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for L in seqs:
        at = {r["method"]: r for r in rows if r["seq_len"] == L and r.get("latency_ms_p50") is not None}
        ours = at.get("edgeslim")
        if ours is None:
            continue
        peers = [at[p] for p in PEERS if p in at]
        best = min(peers, key=lambda p: p["latency_ms_p50"]) if peers else None

        def ratio(other: dict[str, Any] | None, ours: dict[str, Any] = ours) -> str:
            return f"{other['latency_ms_p50'] / ours['latency_ms_p50']:.2f}x" if other else "—"

        teacher = next((r for r in rows if r["seq_len"] == L and r["method"] == "teacher-pytorch"), None)
        which = f" ({best['method']})" if best else ""
        drop = (
            f"{100 * (ours['accuracy'] - teacher['accuracy']):+.2f}"
            if teacher and teacher.get("accuracy") is not None and ours.get("accuracy") is not None
            else "—"
        )
        lines.append(
            f"| {L} | {ratio(at.get('fp32-onnx'))} | {ratio(at.get('teacher-pytorch'))} | "
            f"{ratio(best)}{which} | {drop} |"
        )
    lines += ["", "## Goal check", "", f"Goal (issue 14): {v['goal']}.", ""]
    if v.get("missing"):
        lines.append(f"**No verdict: {v['missing']}.**")
    else:
        f, p, s = v["vs_fp32"], v["vs_peer"], v["size"]
        lines.append(
            f"- **Speed vs FP32 ONNX: {met(f['speedup_met'])}.** {f['speedup']:.2f}x (goal "
            f"{GOAL['speedup_vs_fp32']}x; worst case over the rounds, fp32-onnx's fastest round against "
            f"edgeslim's slowest: {f['speedup_worst_case']:.2f}x)."
        )
        lines.append(
            f"- **Accuracy vs the teacher: {met(f['accuracy_met'])}.** edgeslim {f['edgeslim_accuracy']:.2%}, "
            f"teacher (PyTorch) {f['teacher_accuracy']:.2%}: {-f['drop_pt']:+.2f} pt (goal: at most "
            f"{GOAL['accuracy_drop_pt']:.0f} point below)."
        )
        if p["peers_measured"]:
            each = ", ".join(f"{k} {val:+.2f} pt" for k, val in p["accuracy_vs_each_pt"].items())
            lines.append(
                f"- **Speed vs the faster peer: {met(p['speedup_met'])}.** The faster of "
                f"{' and '.join(p['peers_measured'])} is {p['faster_peer']} at {p['faster_peer_p50_ms']:.2f} ms; "
                f"edgeslim {p['edgeslim_p50_ms']:.2f} ms = {p['speedup']:.2f}x (goal {GOAL['speedup_vs_peer']}x; "
                f"worst case {p['speedup_worst_case']:.2f}x)."
            )
            lines.append(
                f"- **Accuracy vs that peer: {met(p['accuracy_met'])}.** edgeslim {f['edgeslim_accuracy']:.2%} vs "
                f"{p['faster_peer']} {p['faster_peer_accuracy']:.2%} (edgeslim minus each peer: {each})."
            )
            if len(p["peers_measured"]) < len(PEERS):
                lines.append("  Only the peers measured count: see the skipped rows.")
        else:
            lines.append("- **Speed and accuracy vs the peers: NOT MET** — no peer could be measured.")
        lines.append(
            f"- **Size: {met(s['met'])}.** {s['edgeslim_bytes']:,} vs {s['fp32_bytes']:,} bytes = "
            f"{s['ratio']:.1f}x smaller (goal {GOAL['size_ratio']}x)."
        )
        lines += ["", f"Overall: **{'goal met' if v['met'] else 'goal NOT met'}** at sequence {v['seq_len']}."]
    lines += ["", "## What each row is", ""]
    first = {m: next(r for r in rows if r["method"] == m) for m in METHODS if any(r["method"] == m for r in rows)}
    for m, r in first.items():
        settings = "; ".join(f"{k}: {val}" for k, val in (r.get("settings") or {}).items())
        built = (
            f" Built in {r['build_seconds']:.0f} s{' (cached from an earlier run)' if r.get('cached') else ''}."
            if r.get("build_seconds") is not None
            else ""
        )
        notes = " ".join(f"{n}." for n in r.get("notes") or [])
        skipped = f" **Skipped: {r['skipped']}**" if r.get("skipped") else ""
        lines.append(f"- `{m}`: {r['what']}. {settings}.{built} {notes}{skipped}".rstrip())
    lines += [
        "",
        "## Measurement",
        "",
        f"- Latency: ONNX Runtime CPU, 1 thread, batch 1, graph optimization `all`, "
        f"`edgeslim.devices.host.measure_latency` (a fresh Python process per measurement); the teacher in "
        f"PyTorch (1 thread, `torch.inference_mode`) in a fresh process started by this script. {meta['warmup']} "
        f"warm-up + up to {meta['runs']} timed runs (or {meta['max_seconds']:g} s of timed runs, at least 5). Input: "
        f"the first test review at that length (`token_type_ids`, where a model takes it, are zeros). "
        f"{meta['rounds']} rounds; in each round every method is measured at every length, the method order "
        "rotates and the length order alternates. p50 = median of the round p50s; brackets: their min–max.",
        int8_line(meta),
        f"- Accuracy: top-1 on the test split at each length; ONNX Runtime (graph optimization `all`, "
        f"{meta['eval_threads']} thread(s), batches of {EVAL_BATCH}), the teacher in PyTorch. For comparison, the "
        f"run's own report gives the baseline {meta['run_baseline_accuracy']:.2%} and the final model "
        f"{meta['run_final_accuracy']:.2%} at its length {meta['run_max_length']}.",
        "- Size: bytes of the ONNX file plus its external data files (none here); for teacher-pytorch the "
        "baseline stage's `model.safetensors`.",
        f"- The teacher's Hugging Face folder (`{meta['hf_dir']}`) reproduces the pipeline's teacher: max |Δ logit| "
        f"{meta['hf_parity_max_abs_diff']:.1e} on 8 test reviews.",
        "",
        "## Timings",
        "",
        "Wall time (s): "
        + ", ".join(f"{k.replace('_', ' ')} {val:.0f}" for k, val in meta["timings_s"].items())
        + ". Every figure is also in docs/transformer.json.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--torch-worker":
        return torch_worker(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "artifacts/minilm_sentiment", help="the pipeline run folder")
    parser.add_argument("--seq", type=int, nargs="+", default=[32, 128, 256], help="sequence lengths")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 5)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 200)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs per measurement (default 20)")
    parser.add_argument("--max-seconds", type=float, default=None, help="timed seconds per measurement (default 10)")
    parser.add_argument("--eval-threads", type=int, default=2, help="threads for the accuracy passes")
    parser.add_argument("--docs-dir", type=Path, default=None, help="default: docs/ (--smoke: the cache folder)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "artifacts/transformer_bench")
    parser.add_argument("--olive-venv", type=Path, default=ROOT / "artifacts/peers/olive-venv")
    parser.add_argument("--no-olive", action="store_true", help="record olive as skipped (no venv, no olive run)")
    parser.add_argument("--force", action="store_true", help="rebuild every cached peer model")
    parser.add_argument(
        "--exact-int8",
        action="store_true",
        help="run INT8 models that need it in ONNX Runtime's exact INT8 mode (the pipeline's measurement on x86 "
        "without VNNI); default: every model with ONNX Runtime's default kernels, as each tool's users run it",
    )
    parser.add_argument("--smoke", action="store_true", help=f"a quick check of this script: {SMOKE}")
    args = parser.parse_args()
    defaults = SMOKE if args.smoke else {"rounds": 5, "runs": 200, "warmup": 20, "max_seconds": 10.0}
    for k in ("rounds", "runs", "warmup", "max_seconds"):
        if getattr(args, k) is None:
            setattr(args, k, defaults[k])
    test_limit = SMOKE["test_limit"] if args.smoke else None
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    timings: dict[str, float] = {}

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from edgeslim.devices.edgeslim_bench import device_facts
    from edgeslim.engine.store import Artifact, sha256_file
    from edgeslim.export.onnx_io import export_onnx, needs_exact_int8
    from edgeslim.models.loader import ModelLoader

    run_dir = args.run.resolve()
    if not (run_dir / "report.json").is_file():
        log(f"{rel(run_dir)} is not a pipeline run folder (no report.json)")
        return 2
    run = read_run(run_dir)
    config = run["config"]
    work = (args.work_dir / run_dir.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    docs = (args.docs_dir or (work / "docs-smoke" if args.smoke else ROOT / "docs")).resolve()
    seqs = sorted(set(args.seq))
    log(f"run {rel(run_dir)}; teacher {run['baseline'].dir}, edgeslim {rel(run['final_onnx'])}; seq {seqs}")

    # the data at every length
    t = time.perf_counter()
    splits = {L: split_at(config.data, L, test_limit) for L in sorted({*seqs, config.data.max_length, 512})}
    full = splits[512]  # nothing truncated: every review's real token count
    lengths = full["mask"].sum(1)
    own = splits[config.data.max_length]
    fingerprint_ok = own["fingerprint"] == run["data_fingerprint"]
    timings["data"] = time.perf_counter() - t
    log(
        f"data: {len(lengths)} test reviews, longest {int(lengths.max())} tokens; fingerprint "
        f"{'matches' if fingerprint_ok else 'DIFFERS from'} the run's"
    )

    # the teacher, its Hugging Face folder, and every model
    t = time.perf_counter()
    data = own["data"]
    loader = ModelLoader(config.model, data.in_channels, data.num_classes, data.example_batch(2), seed=config.seed)
    teacher = loader.load(Artifact.load(run_dir / run["baseline"].dir)).eval()
    teacher_sha = run["baseline_weights_sha256"]
    versions = {p: version(p) for p in ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx")}
    hf_dir = work / "hf-teacher"
    hf_key = {
        "recipe": RECIPE_VERSION,
        "teacher": teacher_sha,
        "transformers": versions["transformers"],
        "tokenizer": str(data.tokens.tokenizer),
    }
    hf_meta = build_hf_folder(hf_dir, teacher, data.tokens.tokenizer, hf_key, args.force)
    parity = hf_parity(hf_dir, teacher, own["ids"], own["mask"])
    if parity > 1e-3:
        log(f"the Hugging Face folder's model differs from the teacher (max |Δ logit| {parity:.2e})")
        return 2

    methods = {m: Method(m) for m in METHODS}
    methods["teacher-pytorch"].settings = {
        "model": f"{rel(run_dir / run['baseline'].dir)} via the run's model "
        f"loader (accuracy); its save_pretrained copy {rel(hf_dir)} (latency)"
    }
    fp32 = methods["fp32-onnx"]
    if all(isinstance(d, str) for d in sequence_axis(run["baseline_onnx"])):
        fp32.path = run["baseline_onnx"]
        fp32.settings = {
            "model": f"{rel(fp32.path)} (the baseline stage's deployable: edgeslim's torch "
            "exporter, torch.onnx.export(dynamo=True), opset 20, dynamic batch and sequence)"
        }
    else:  # a fixed sequence length cannot serve the other lengths: export the teacher again
        fp32.settings = {"model": "the teacher exported with edgeslim.export.onnx_io.export_onnx (dynamic axes)"}
        cached_model(
            fp32,
            work / "fp32-onnx",
            {"recipe": RECIPE_VERSION, "teacher": teacher_sha, **versions},
            lambda out: export_onnx(teacher, data.example_batch(2), out),
            args.force,
        )
    peer_key = {"recipe": RECIPE_VERSION, "hf_folder": hf_meta["key"], **versions}
    cached_model(methods["optimum"], work / "optimum", peer_key, build_optimum(methods["optimum"], hf_dir), args.force)
    olive = methods["olive"]
    if args.no_olive:
        olive.skipped = "--no-olive was given"
    else:
        import peers  # bench/peers.py: Olive's venv, made the same way for every bench script

        hf_config = json.loads((hf_dir / "config.json").read_text())
        heads, hidden = int(hf_config["num_attention_heads"]), int(hf_config["hidden_size"])
        try:
            _, olive_versions = peers.ensure_olive_venv(args.olive_venv.resolve())
        except peers.Skipped as exc:
            olive.skipped = f"Olive's venv: {exc}"
            log(f"olive: skipped: {olive.skipped}")
        else:
            cached_model(
                olive,
                work / "olive",
                {**peer_key, "olive_venv": olive_versions},
                build_olive(olive, hf_dir, args.olive_venv.resolve(), heads, hidden),
                args.force,
            )
    flags = device_facts().get("isa_flags") or []
    if "avx512_vnni" not in flags and not methods["optimum"].skipped:
        methods["optimum"].notes.append(
            "the avx512_vnni preset is the one the issue names; this CPU has no AVX512-VNNI "
            f"({', '.join(flags) or 'no listed SIMD flags'}), so ONNX Runtime runs its U8S8 kernels without VNNI"
        )
    ours = methods["edgeslim"]
    ours.path = run["final_onnx"]
    ours.settings = {
        "model": f"{rel(ours.path)} (the run's {run['final'].dir} stage)",
        "stages": " -> ".join(s.dir for s in run["result"].stages),
    }
    if run["deliverable"].resolve() != ours.path.resolve() and sha256_file(run["deliverable"]) != sha256_file(
        ours.path
    ):
        ours.notes.append(f"the run's deliverable is another file: {rel(run['deliverable'])}")
    timings["models"] = time.perf_counter() - t
    for m in methods.values():
        if m.path is not None and not m.skipped:
            axes = sequence_axis(m.path)
            if not all(isinstance(d, str) for d in axes):
                m.notes.append(f"fixed sequence axis {axes}: measured only at that length")

    # accuracy at every length
    t = time.perf_counter()
    torch.set_num_threads(args.eval_threads)
    labels = {L: splits[L]["labels"] for L in seqs}
    preds: dict[str, dict[int, np.ndarray]] = {m: {} for m in METHODS}
    exact_preds: dict[str, dict[int, np.ndarray]] = {m: {} for m in METHODS}
    needs = {n: bool(needs_exact_int8(m.path)) for n, m in methods.items() if m.path is not None and not m.skipped}
    acc_errors: dict[str, dict[int, str]] = {m: {} for m in METHODS}
    for L in seqs:
        ids, mask = splits[L]["ids"], splits[L]["mask"]
        for name, m in methods.items():
            if m.skipped:
                continue
            try:
                if name == "teacher-pytorch":
                    preds[name][L] = torch_predictions(teacher, ids, mask)
                else:
                    preds[name][L] = onnx_predictions(m.path, ids, mask, args.eval_threads, args.exact_int8)
                    if not args.exact_int8 and needs[name]:  # what the exact INT8 kernels would answer
                        exact_preds[name][L] = onnx_predictions(m.path, ids, mask, args.eval_threads, True)
            except Exception as exc:
                acc_errors[name][L] = f"{type(exc).__name__}: {exc}"[:300]
                log(f"accuracy {name} seq {L}: {acc_errors[name][L]}")
        log(
            f"accuracy at seq {L}: "
            + ", ".join(f"{n} {(p[L] == labels[L]).mean():.2%}" for n, p in preds.items() if L in p)
        )
    timings["accuracy"] = time.perf_counter() - t

    # latency: every method at every length, interleaved
    t = time.perf_counter()
    timed = {n: m for n, m in methods.items() if not m.skipped}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {}
        for L in seqs:
            ids, mask = splits[L]["ids"][:LATENCY_SAMPLES], splits[L]["mask"][:LATENCY_SAMPLES]
            inputs[L] = Path(tmp) / f"inputs_{L}.npz"
            np.savez(inputs[L], input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
        latency, lat_errors = measure_rounds(timed, hf_dir, inputs, args)
    timings["latency"] = time.perf_counter() - t

    # rows
    rows: list[dict[str, Any]] = []
    for name, m in methods.items():
        if name == "teacher-pytorch":  # the PyTorch weights file the teacher loads from
            size = (run_dir / run["baseline"].dir / "model.safetensors").stat().st_size
        else:
            size = onnx_size(m.path) if m.path is not None and not m.skipped else None
        for L in seqs:
            row: dict[str, Any] = {
                "method": name,
                "seq_len": L,
                "accuracy": None,
                "size_bytes": size,
                "latency_ms_p50": None,
                "latency_ms_spread": None,
                "what": WHAT[name],
                "skipped": m.skipped,
            }
            if L in preds[name]:
                right = preds[name][L] == labels[L]
                row.update(accuracy=float(right.mean()), test_correct=int(right.sum()), test_samples=len(right))
                if name != "teacher-pytorch" and L in preds["teacher-pytorch"]:
                    row["agreement_with_teacher"] = float((preds[name][L] == preds["teacher-pytorch"][L]).mean())
                if name != "edgeslim" and L in preds["edgeslim"]:
                    ours_right = preds["edgeslim"][L] == labels[L]
                    b, c = int((ours_right & ~right).sum()), int((~ours_right & right).sum())
                    row["paired_vs_edgeslim"] = {
                        "edgeslim_only_right": b,
                        "this_only_right": c,
                        "mcnemar_p": exact_sign_test(b, c),
                    }
            if L in exact_preds[name]:
                row["accuracy_exact_int8"] = float((exact_preds[name][L] == labels[L]).mean())
            if acc_errors[name].get(L):
                row["accuracy_error"] = acc_errors[name][L]
            rounds = latency.get(name, {}).get(L) or []
            if rounds:
                p50s = [x["p50"] for x in rounds]
                row.update(
                    latency_ms_p50=statistics.median(p50s),
                    latency_ms_spread=[min(p50s), max(p50s)],
                    round_p50_ms=[round(x, 4) for x in p50s],
                    timed_runs=[x["runs"] for x in rounds],
                )
            if lat_errors.get(name, {}).get(L):
                row["latency_error"] = lat_errors[name][L]
            if m.path is not None and not m.skipped:
                row.update(model=rel(m.path), model_sha256=sha256_file(m.path), needs_exact_int8=needs.get(name))
            row.update(settings=m.settings, notes=m.notes, build_seconds=m.build_seconds, cached=m.cached)
            rows.append(row)

    timings["total"] = time.perf_counter() - started
    goal_seq = GOAL_SEQ if GOAL_SEQ in seqs else seqs[len(seqs) // 2]
    report = run["result"].report
    stage_acc = {s.name: s.metrics.accuracy for s in report.stages if s.metrics is not None}
    meta = {
        "command": shlex.join(["nice", "-n", "19", ".venv/bin/python", "bench/transformer.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "run_dir": rel(run_dir),
        "run_name": report.run,
        "device": device_facts(),
        "versions": versions,
        "seqs": seqs,
        "rounds": args.rounds,
        "runs": args.runs,
        "warmup": args.warmup,
        "max_seconds": args.max_seconds,
        "eval_threads": args.eval_threads,
        "threads": 1,
        "batch_size": 1,
        "test_samples": len(lengths),
        "test_limited": test_limit is not None and len(own["labels"]) < len(own["data"].test.labels),
        "longest_tokens": int(lengths.max()),
        "truncated_at_32": int((lengths > 32).sum()),
        "fingerprint_matches": fingerprint_ok,
        "run_max_length": config.data.max_length,
        "run_baseline_accuracy": stage_acc.get("baseline"),
        "run_final_accuracy": stage_acc.get("quantize"),
        "hf_dir": rel(hf_dir),
        "hf_parity_max_abs_diff": parity,
        "needs_exact_int8": needs,
        "exact_int8": args.exact_int8,
        "smoke": args.smoke,
        "load_average": [load_start, os.getloadavg()[0]],
        "timings_s": timings,
    }
    meta["rows_exact"] = [
        {k: r[k] for k in ("method", "seq_len", "accuracy_exact_int8")} for r in rows if "accuracy_exact_int8" in r
    ]
    meta["verdict"] = verdict(rows, goal_seq)
    meta["verdict_other_lengths"] = {n: verdict(rows, n) for n in seqs if n != goal_seq}
    rows[0]["run"] = meta
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "transformer.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    text = markdown(rows, meta)
    (docs / "transformer.md").write_text(text)
    log(f"wrote {rel(docs / 'transformer.md')} and {rel(docs / 'transformer.json')}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
