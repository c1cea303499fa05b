"""The model zoo: is edgeslim's INT8 really faster on standard edge CNNs? (the evidence for issue 12)

For each zoo model (``configs/zoo/*.yaml``: resnet18, mobilenet_v3_small, efficientnet_b0, vit_tiny) and the
default ``edge_cnn`` (``configs/mnist_cnn.yaml``, whose final model is INT8 from QAT) the pipeline runs through
the Python API (``edgeslim.run``, cached in ``artifacts/zoo/``: a rerun only reuses), then these variants are
built and measured:

* ``baseline-fp32``: the unpruned FP32 ONNX of the trained baseline (the baseline stage's ``deploy.onnx``);
* ``pruned-fp32``: the pruned + fine-tuned float model as ONNX: the export stage's model in float pipelines; in
  a QAT pipeline (no fine-tuned float model exists) the last float stage's deployable ONNX, i.e. the pruned one
  (same architecture, so the same latency; its accuracy is before fine-tuning, which the page says);
* ``edgeslim``: the pipeline's final model (the quantize stage's output, or the export stage's in a QAT
  pipeline): INT8, or the float model when INT8 was slower (``deliverable`` and ``reason`` from the stage);
* peers on the same baseline: ``ort-static-ptq`` (ONNX Runtime ``quant_pre_process`` + ``quantize_static``,
  QDQ, per-channel, MinMax: ``bench/peers.py``'s builder); ``diy`` (torch-pruning ``MagnitudeImportance(p=1)``
  at the prune stage's channel ratio + the finetune stage's epochs with plain cross-entropy, no distillation,
  then the same ORT static PTQ); ``neural-compressor`` and ``olive`` (``bench/peers.py``'s builders), each
  within ``--peer-time-limit`` or reported as not run, with the reason.

Static peers calibrate on the images the pipeline's quantize stage calibrates on (same count, same seed).
Accuracy: ONNX Runtime top-1 on the test split (``edgeslim.engine.evaluate.onnx_accuracy``). Latency: all of a
model's variants side by side in one worker process per batch size (``edgeslim.devices.host.measure_interleaved``:
interleaved rounds whose order rotates, 1 thread, the host profile's graph optimization and INT8 kernels, real
test images), batch 1 and 8; p50 with a bootstrap interval (``edgeslim.engine.stats``) and the min-max of the
per-round medians; speed-ups are ratios of medians with bootstrap intervals. INT8 kernel fraction: share of
conv/linear nodes on integer kernels in the graph ONNX Runtime executes
(``edgeslim.quant.coverage.runtime_coverage``). Pipelines and peer builds happen first, every measurement after
them, in one run. Writes docs/zoo.json (a list: one object per model and variant) and docs/zoo.md. Usage::

    .venv/bin/python bench/zoo.py [--models resnet18 ...] [--skip-peers [NAME ...]] [--rounds 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402  (bench/peers.py: the peer builders and helpers shared with the default-model benchmark)
from peers import Method, Skipped, cached_build, rel, version  # noqa: E402

from edgeslim.api import RunResult, load_config  # noqa: E402
from edgeslim.config.schema import RunConfig  # noqa: E402
from edgeslim.data.datasets import DataSplits, load_data  # noqa: E402
from edgeslim.devices.edgeslim_bench import device_facts  # noqa: E402
from edgeslim.devices.host import measure_interleaved  # noqa: E402
from edgeslim.engine.evaluate import onnx_accuracy  # noqa: E402
from edgeslim.engine.measure import latency_inputs  # noqa: E402
from edgeslim.engine.stats import median_interval, ratio_of_medians  # noqa: E402
from edgeslim.engine.store import ONNX, TORCH, Artifact, sha256_file  # noqa: E402
from edgeslim.export.onnx_io import exact_int8_unavailable  # noqa: E402
from edgeslim.quant.coverage import runtime_coverage  # noqa: E402

MODELS = {
    "resnet18": ROOT / "configs/zoo/resnet18.yaml",
    "mobilenet_v3_small": ROOT / "configs/zoo/mobilenet_v3_small.yaml",
    "efficientnet_b0": ROOT / "configs/zoo/efficientnet_b0.yaml",
    "vit_tiny": ROOT / "configs/zoo/vit_tiny.yaml",
    "edge_cnn": ROOT / "configs/mnist_cnn.yaml",
}
PEERS = ("ort-static-ptq", "diy", "neural-compressor", "olive")
BATCH_SIZES = (1, 8)
DIY_RECIPE = 1  # bump to rebuild every cached diy model
GOAL_VS_PRUNED, GOAL_VS_BASELINE, GOAL_MAX_DROP_PT = 1.5, 3.0, 1.0


def log(message: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class Pipeline:
    """One model's pipeline run and the files the variants come from."""

    name: str
    config_path: Path
    config: RunConfig
    result: RunResult
    seconds: float
    data: DataSplits
    baseline: Path
    pruned: Path
    pruned_stage: str
    final: Path
    final_stage: str
    deliverable: str
    reason: str
    final_details: dict[str, Any]
    calibration: np.ndarray
    calibration_seed: int


def stage_kind(result: RunResult, label: str) -> str:
    return Artifact.load(result.stage_dir(label)).kind


def run_pipeline(name: str, config_path: Path, out: Path) -> Pipeline:
    import edgeslim

    log(f"{name}: edgeslim.run({rel(config_path)}, out={rel(out)}) (cached stages are reused)")
    start = time.perf_counter()
    result = edgeslim.run(config_path, out=out)
    seconds = time.perf_counter() - start
    statuses = ", ".join(f"{s.label} {s.status}" for s in result.stages)
    log(f"{name}: pipeline done in {seconds:.0f} s ({statuses})")
    config = load_config(config_path)
    stages = result.stages
    # the final model: the last stage that makes the deployable (quantize; in a QAT pipeline, export)
    final = [s for s in stages if s.name in ("quantize", "export")][-1]
    prune_at = next(s.index for s in stages if s.name == "prune")
    # the pruned float model: the last float stage after pruning and before the final one
    floats = [s for s in stages if prune_at <= s.index < final.index and stage_kind(result, s.label) in (TORCH, ONNX)]
    pruned = floats[-1]
    details = final.details
    if final.name == "quantize":
        deliverable = details.get("deliverable", "int8")
        wanted = "kept the float model" if deliverable == "float" else "INT8 p50"
        why = [n for n in final.notes if n.startswith(wanted)] or [n for n in final.notes if "INT8 coverage" in n]
        why += [n for n in final.notes if n.startswith("per-op time")]  # which ops make a rejected INT8 lose
        if final.guard is not None and final.guard.action != "within budget":
            why.append(f"accuracy guard: {final.guard.action}")
    else:  # QAT: the export stage's INT8 model, INT8 only if ONNX Runtime really runs it on integer kernels
        coverage = details.get("int8_coverage") or {}
        deliverable = "int8" if coverage.get("is_int8") else "float"
        why = ["INT8 from quantization-aware training (no post-training quantize stage)"]
        why += [n for n in final.notes if "INT8 coverage" in n]
    data = load_data(config.data)
    # the calibration images of the quantize stage (stage seed = run seed + index); QAT pipelines: the run seed
    calib_seed = config.seed + (final.index if final.name == "quantize" else 0)
    calib_n = getattr(config.stages[final.index].settings, "calibration_samples", peers.CALIBRATION_SAMPLES)
    return Pipeline(
        name=name,
        config_path=config_path,
        config=config,
        result=result,
        seconds=seconds,
        data=data,
        baseline=result.model_file("baseline"),
        pruned=result.model_file(pruned.label),
        pruned_stage=pruned.label,
        final=result.model_file(final.label),
        final_stage=final.label,
        deliverable=deliverable,
        reason="; ".join(why),
        final_details=details,
        calibration=peers.pick_calibration(data, calib_seed, calib_n),
        calibration_seed=calib_seed,
    )


# --------------------------------------------------------------------------------------------- peers


def build_diy(method: Method, p: Pipeline, ratio: float) -> Callable[[Path], None]:
    """Do it yourself: torch-pruning L1 magnitude at ``ratio``, plain cross-entropy fine-tuning, ORT static PTQ."""
    ft = next(e.settings for e in p.config.stages if e.type == "finetune")
    method.settings = {
        "prune": f"tp.pruner.BasePruner(MagnitudeImportance(p=1), pruning_ratio={ratio:g}, classifier ignored"
        + (", num_heads of the attention qkv layers" if p.name == "vit_tiny" else "")
        + "), no BatchNorm re-estimation",
        "finetune": f"{ft.epochs} epochs (the finetune stage's), plain cross-entropy, no distillation, "
        f"AdamW lr {ft.optimizer.lr:g} weight_decay {ft.optimizer.weight_decay:g} (the stage's), constant lr, "
        f"batch {ft.batch_size}, seed {p.config.seed}",
        "quantize": "the ort-static-ptq recipe on the pruned model (quant_pre_process -> quantize_static QDQ, "
        "per-channel, MinMax)",
        "calibration_images": len(p.calibration),
    }

    def build(out: Path) -> None:
        import torch
        import torch_pruning as tp
        from torch.nn import functional as F

        from edgeslim.export.onnx_io import export_onnx
        from edgeslim.models.loader import ModelLoader, output_layer_name
        from edgeslim.stages.prune import attention_settings

        data = p.data
        example = data.example_batch(2)
        loader = ModelLoader(p.config.model, data.input_shape[0], data.num_classes, example)
        model = loader.load(Artifact.load(p.result.stage_dir("baseline")))
        modules = dict(model.named_modules())
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[modules[output_layer_name(model, example)]],
            **attention_settings(model),
        )
        pruner.step()
        torch.manual_seed(p.config.seed)
        generator = torch.Generator().manual_seed(p.config.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=ft.optimizer.lr, weight_decay=ft.optimizer.weight_decay)
        x, y = data.train.tensors
        model.train()
        for _ in range(ft.epochs):
            order = torch.randperm(len(x), generator=generator)
            for i in range(0, len(x), ft.batch_size):
                idx = order[i : i + ft.batch_size]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        pruned_onnx = out.with_name("pruned_fp32.onnx")
        export_onnx(model, example, pruned_onnx)
        peers.build_ort_static(Method("ort-static-ptq", "peer", ""), pruned_onnx, p.calibration)(out)
        batch = p.config.measure.eval_batch_size
        method.extras = {
            "pruned_fp32_accuracy": onnx_accuracy(pruned_onnx, data, batch, exact_int8=p.config.host.exact_int8),
            "params": sum(t.numel() for t in model.parameters()),
        }

    return build


class _Deadline(BaseException):
    """Raised by the alarm: a BaseException, so a library's ``except Exception`` around a trial cannot swallow it."""


def guarded(build: Callable[[Path], None], limit_s: float | None) -> Callable[[Path], None]:
    """``build`` within ``limit_s`` seconds (SIGALRM, re-armed every 10 s until the build gives up; a subprocess
    it waits on is killed by ``subprocess.run``); any failure becomes :class:`Skipped` with a one-line reason, so
    one peer cannot end the run."""

    def run(out: Path) -> None:
        def expire(signum: int, frame: Any) -> None:
            signal.alarm(10)
            raise _Deadline

        previous = signal.signal(signal.SIGALRM, expire)
        if limit_s:
            signal.alarm(max(1, int(limit_s)))
        try:
            build(out)
        except _Deadline:
            raise Skipped(f"did not build within the time limit ({limit_s:.0f} s)") from None
        except Skipped:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise Skipped(f"build failed: {type(exc).__name__}: {first}") from exc
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return run


def build_peer(method: Method, folder: Path, key: dict[str, Any], build: Callable[[Path], None], args: Any) -> None:
    """``peers.cached_build`` within the time limit; a failed or timed-out build is remembered (``skipped.json``,
    same inputs and limit) so a rerun does not spend the time again (``--retry-skipped`` or ``--force`` to retry)."""
    marker = folder / "skipped.json"
    key = {**key, "time_limit_s": args.peer_time_limit}
    if marker.is_file() and not (args.force or args.retry_skipped):
        saved = json.loads(marker.read_text())
        if saved.get("inputs") == json.loads(json.dumps(key, default=str)):
            method.skipped, method.settings = saved["reason"], saved.get("settings", {})
            log(f"{method.name}: not run ({saved['reason']}; remembered from an earlier run)")
            return
    if method.name in (args.cached_peers_only or []):  # reuse a build with these inputs, never make one

        def build(_: Path) -> None:
            raise Skipped("not built in this run (--cached-peers-only: a new build takes minutes here)")

    cached_build(method, folder, key, guarded(build, args.peer_time_limit), args.force)
    if method.skipped and method.name in (args.cached_peers_only or []):
        return  # not a failure of the build: nothing to remember
    if method.skipped:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(
            json.dumps({"inputs": key, "reason": method.skipped, "settings": method.settings}, indent=2, default=str)
            + "\n"
        )
    else:
        marker.unlink(missing_ok=True)


def build_peers(p: Pipeline, args: Any) -> list[Method]:
    folder = args.out / "peers" / p.name
    folder.mkdir(parents=True, exist_ok=True)
    calib_npy = folder / f"calibration_{len(p.calibration)}.npy"
    np.save(calib_npy, p.calibration)
    common = {
        "baseline_onnx": sha256_file(p.baseline),
        "calibration": sha256_file(calib_npy),
        "onnxruntime": version("onnxruntime"),
        "onnx": version("onnx"),
    }
    skip = set(PEERS if args.skip_peers == [] else args.skip_peers or [])
    methods = []

    def wanted(method: Method) -> bool:
        methods.append(method)
        if method.name in skip:
            method.skipped = "--skip-peers"
            return False
        return True

    static = Method("ort-static-ptq", "peer", "ONNX Runtime static PTQ of the baseline (QDQ, per-channel, MinMax)")
    if wanted(static):
        build = peers.build_ort_static(static, p.baseline, p.calibration)
        build_peer(static, folder / static.name, {**common, "recipe": peers.RECIPE_VERSION}, build, args)

    diy = Method("diy", "peer", "torch-pruning L1 + plain fine-tuning + ORT static PTQ")
    if wanted(diy):
        prune = p.result.stage("prune")
        ratio = float(prune.details.get("pruning_ratio", p.config.stages[prune.index].settings.pruning_ratio))
        weights = p.result.stage_dir("baseline") / "model.safetensors"
        key = {
            **common,
            "recipe": DIY_RECIPE,
            "ratio": ratio,
            "finetune": next(e.settings for e in p.config.stages if e.type == "finetune").model_dump(mode="json"),
            "baseline_weights": sha256_file(weights) if weights.is_file() else None,
            "data": p.data.fingerprint,
            "seed": p.config.seed,
            "versions": {k: version(k) for k in ("torch", "torch-pruning")},
        }
        build_peer(diy, folder / diy.name, key, build_diy(diy, p, ratio), args)

    inc = Method("neural-compressor", "peer", "Intel Neural Compressor accuracy-aware PTQ (torch → QDQ ONNX)")
    if wanted(inc):
        baseline_dir = p.result.stage("baseline").dir
        weights = p.result.run_dir / baseline_dir / "model.safetensors"
        inc_py = ROOT / "pipeline/quant/inc.py"
        key = {
            **common,
            "recipe": peers.RECIPE_VERSION,
            "baseline_weights": sha256_file(weights) if weights.is_file() else None,
            "inc_backend": sha256_file(inc_py) if inc_py.is_file() else None,
            "versions": {k: version(k) for k in ("neural_compressor", "torch", "torchao")},
        }
        build = peers.build_inc(inc, p.result.run_dir, baseline_dir, p.config_path, p.data, p.calibration, 0.0)
        build_peer(inc, folder / inc.name, key, build, args)

    olive = Method("olive", "peer", "Microsoft Olive OnnxStaticQuantization workflow on the baseline ONNX")
    if wanted(olive):
        venv = ROOT / "artifacts/peers/olive-venv"  # shared with bench/peers.py
        try:
            _, olive_versions = peers.ensure_olive_venv(venv)
        except Skipped as exc:
            olive.skipped = str(exc)
        else:
            key = {**common, "olive_venv": olive_versions, "user_script": sha256_file(peers.USER_SCRIPT)}
            build_peer(olive, folder / olive.name, key, peers.build_olive(olive, p.baseline, calib_npy, venv), args)
    return methods


# --------------------------------------------------------------------------------------------- measuring


def spread(samples: list[float], per_round: int) -> dict[str, Any]:
    values = np.asarray(samples, dtype=np.float64)
    rounds = [statistics.median(samples[i : i + per_round]) for i in range(0, len(samples), per_round)]
    return {
        "p50": float(np.median(values)),
        "ci": list(median_interval(values)),
        "round_range": [min(rounds), max(rounds)],
        "samples": len(samples),
        "rounds": len(rounds),
    }


def measure_model(paths: dict[str, Path], p: Pipeline, args: Any, batch_order: tuple[int, ...]) -> dict[str, Any]:
    """Every variant of one model side by side, one worker process per batch size."""
    names = list(paths)
    host = p.config.host
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = latency_inputs(p.data, Path(tmp))
        for batch in batch_order:
            start = time.perf_counter()
            timed = measure_interleaved(
                [paths[n] for n in names],
                threads=1,
                batch_size=batch,
                graph_optimization=host.graph_optimization,
                exact_int8=host.exact_int8,
                inputs=inputs,
                rounds=args.rounds,
                runs_per_round=args.runs_per_round,
                warmup=args.warmup,
                max_seconds=args.max_seconds,
            )
            out[f"b{batch}"] = {
                "samples_ms": dict(zip(names, timed["samples_ms"], strict=True)),
                "rounds": timed["rounds"],
                "runs_per_round": timed["runs_per_round"],
                "seconds": time.perf_counter() - start,
            }
            log(
                f"{p.name} b{batch} ({timed['rounds']} rounds, {time.perf_counter() - start:.0f} s): "
                + ", ".join(f"{n} {np.median(s):.3f}" for n, s in zip(names, timed["samples_ms"], strict=True))
                + " ms"
            )
    return out


def speedup(reference: list[float], candidate: list[float]) -> dict[str, Any]:
    ratio, ci, verdict = ratio_of_medians(np.asarray(reference), np.asarray(candidate))
    return {"ratio": ratio, "ci": list(ci) if ci else None, "verdict": verdict}


# --------------------------------------------------------------------------------------------- rows


def make_rows(
    p: Pipeline, methods: list[Method], timed: dict[str, Any], paths: dict[str, Path]
) -> list[dict[str, Any]]:
    host, batch = p.config.host, p.config.measure.eval_batch_size
    labels = p.data.test.tensors[1].numpy()
    preds = {n: peers.predictions(path, p.data, batch) for n, path in paths.items()}
    what = {
        "baseline-fp32": f"unpruned FP32 baseline ({p.result.stage('baseline').dir}/deploy.onnx)",
        "pruned-fp32": f"pruned float model ({p.pruned_stage}, {rel(p.pruned).name})"
        + ("" if p.pruned_stage.endswith("export") else "; not fine-tuned: the pipeline fine-tunes with QAT"),
        "edgeslim": f"pipeline's final model ({p.final_stage}), deliverable {p.deliverable}",
    }
    by_name = {m.name: m for m in methods}
    rows: list[dict[str, Any]] = []
    for name in [*what, *by_name]:
        row: dict[str, Any] = {"model": p.name, "variant": name, "role": "peer" if name in by_name else name}
        if name in what:
            row["what"] = what[name]
        else:
            m = by_name[name]
            row.update(what=m.what, settings=m.settings, notes=m.notes, build_seconds=m.build_seconds)
            row.update(cached=m.cached, not_run=m.skipped, **m.extras)
        if name not in paths:
            row.update(accuracy=None, size_bytes=None, int8_kernel_fraction=None)
            row.update({f"latency_ms_p50_b{b}": None for b in BATCH_SIZES})
            rows.append(row)
            continue
        path = paths[name]
        coverage = runtime_coverage(path, host.graph_optimization, host.exact_int8)
        if host.exact_int8 and exact_int8_unavailable(path):
            row["exact_int8_unavailable"] = True
        right = preds[name] == labels
        row.update(
            accuracy=float(right.mean()),
            test_correct=int(right.sum()),
            test_images=len(labels),
            size_bytes=path.stat().st_size,
            int8_kernel_fraction=coverage.integer_fraction,
            int8_coverage=coverage.summary(),
        )
        for b in BATCH_SIZES:
            t = timed[f"b{b}"]
            s = spread(t["samples_ms"][name], t["runs_per_round"])
            row[f"latency_ms_p50_b{b}"] = s["p50"]
            row[f"latency_ms_p50_b{b}_ci95"] = s["ci"]
            row[f"latency_ms_round_p50_range_b{b}"] = s["round_range"]
            row[f"latency_samples_b{b}"] = s["samples"]
        if name == "edgeslim":
            row["deliverable"] = p.deliverable
            row["reason"] = p.reason
            check = p.final_details.get("latency_check")
            if check:
                row["stage_latency_check"] = check  # the quantize stage's own INT8-vs-float timing (batch 1)
            for ref in ("pruned-fp32", "baseline-fp32", *[m.name for m in methods if m.name in paths]):
                for b in BATCH_SIZES:
                    samples = timed[f"b{b}"]["samples_ms"]
                    row[f"speedup_vs_{ref}_b{b}"] = speedup(samples[ref], samples["edgeslim"])
            row["paired_vs"] = {}
            for ref in paths:
                if ref != "edgeslim":
                    other = preds[ref] == labels
                    only_us, only_them = int((right & ~other).sum()), int((~right & other).sum())
                    row["paired_vs"][ref] = {
                        "edgeslim_only_right": only_us,
                        "other_only_right": only_them,
                        "mcnemar_p": peers.exact_sign_test(only_us, only_them),
                    }
        row["file"] = str(rel(path))
        row["sha256"] = sha256_file(path)
        rows.append(row)
    return rows


def goal_status(s: dict[str, Any], goal: float) -> str:
    ci = s["ci"] or [s["ratio"], s["ratio"]]
    if ci[0] >= goal:
        return "met"
    if s["ratio"] >= goal:
        return "met at the median (interval reaches below)"
    return "NOT met"


def verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the issue's goals, and each peer against edgeslim."""
    by = {r["variant"]: r for r in rows}
    ours, base, pruned = by["edgeslim"], by["baseline-fp32"], by["pruned-fp32"]
    drop = 100 * (base["accuracy"] - ours["accuracy"])
    out: dict[str, Any] = {
        "accuracy_drop_pt": drop,
        "accuracy_ok": drop <= GOAL_MAX_DROP_PT + 1e-9,
        "deliverable": ours["deliverable"],
        "speed": {},
        "peers": {},
    }
    for b in BATCH_SIZES:
        vp, vb = ours[f"speedup_vs_pruned-fp32_b{b}"], ours[f"speedup_vs_baseline-fp32_b{b}"]
        out["speed"][f"b{b}"] = {
            "vs_pruned": {**vp, "status": goal_status(vp, GOAL_VS_PRUNED)},
            "vs_baseline": {**vb, "status": goal_status(vb, GOAL_VS_BASELINE)},
        }
    if ours["deliverable"] == "float":
        # INT8 could not pay: the goal is then that the float deliverable is the faster float model
        same = ours.get("sha256") == pruned.get("sha256")
        out["float_fallback"] = {"same_file_as_pruned_fp32": same, "reason_given": bool(ours.get("reason"))}
    for r in rows:
        if r["role"] != "peer":
            continue
        if r.get("not_run"):
            out["peers"][r["variant"]] = {"not_run": r["not_run"]}
            continue
        delta = 100 * (ours["accuracy"] - r["accuracy"])
        entry: dict[str, Any] = {"accuracy_delta_pt": delta, "accuracy_ok": delta >= -1e-9}
        for b in BATCH_SIZES:
            entry[f"b{b}"] = ours[f"speedup_vs_{r['variant']}_b{b}"]
        entry["faster"] = all(entry[f"b{b}"]["ratio"] > 1 for b in BATCH_SIZES)
        entry["won"] = entry["accuracy_ok"] and entry["faster"]
        out["peers"][r["variant"]] = entry
    return out


# --------------------------------------------------------------------------------------------- docs


def fmt_ms(row: dict[str, Any], b: int) -> str:
    v = row.get(f"latency_ms_p50_b{b}")
    if v is None:
        return "—"
    ci, rr = row[f"latency_ms_p50_b{b}_ci95"], row[f"latency_ms_round_p50_range_b{b}"]
    d = 3 if v < 10 else 2 if v < 100 else 1
    return f"{v:.{d}f} [{ci[0]:.{d}f}–{ci[1]:.{d}f}] ({rr[0]:.{d}f}–{rr[1]:.{d}f})"


def fmt_x(s: dict[str, Any] | None) -> str:
    if not s:
        return "—"
    ci = s["ci"]
    return f"{s['ratio']:.2f}x" + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else " [too few samples]")


def write_docs(all_rows: list[dict[str, Any]], info: dict[str, Any], docs: Path) -> str:
    facts = info["device"]
    models = list(dict.fromkeys(r["model"] for r in all_rows))
    v_all = {m: verdicts([r for r in all_rows if r["model"] == m]) for m in models}
    lines = [
        "# The model zoo: INT8 that is really faster on standard edge CNNs? (issue 12)",
        "",
        "For each model, one edgeslim pipeline (its config as shipped), the FP32 baseline it starts from, the pruned "
        "float model it makes on the way, its final model, and peer tools applied to the same trained baseline. "
        f"Written by `bench/zoo.py` on {info['date']}; models in this run: {', '.join(models)}.",
        "",
        "Goal (issue 12): *final model ≥ 1.5x faster than pruned float and ≥ 3x faster than FP32 baseline at ≤ 1 "
        "point accuracy drop; where INT8 cannot pay, the deliverable is the faster float model and the page says "
        "why.*",
        "",
        "```",
        info["command"],
        "```",
        "",
        f"Machine: {facts['cpu']}, {facts['logical_cores']} logical cores, ISA flags "
        f"{', '.join(facts['isa_flags']) or 'none of interest'} (no VNNI: "
        f"{'yes' if not {'avx512_vnni', 'avx_vnni'} & set(facts['isa_flags']) else 'no'}), {facts['os']}, Python "
        f"{facts['python']}, onnxruntime {facts['onnxruntime']}, numpy {facts['numpy']}, torch {version('torch')}. "
        "A shared machine: other jobs ran on the same cores (load average "
        f"{info['load_average'][0]:.2f} at the start, {info['load_average'][1]:.2f} at the end), which is why all "
        "of a model's variants are timed side by side in interleaved rounds and every figure has an interval.",
        "",
        f"Wall time: {info['timings_s']['total']:.0f} s in all ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in info["timings_s"].items() if k != "total")
        + ").",
        "",
        "## Summary",
        "",
        "Speed-ups are edgeslim's final model against the row named, ratio of medians [95% bootstrap interval]. "
        f"Goal status: *met* when the whole interval clears the goal ({GOAL_VS_PRUNED}x vs pruned float, "
        f"{GOAL_VS_BASELINE}x vs the FP32 baseline).",
        "",
        "| model | deliverable | INT8 kernels | accuracy Δ vs FP32 (pt) | vs pruned-fp32 b1 | b8 | "
        "vs baseline-fp32 b1 | b8 | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in models:
        v = v_all[m]
        ours = next(r for r in all_rows if r["model"] == m and r["variant"] == "edgeslim")
        sp = v["speed"]
        met = (
            v["accuracy_ok"]
            and all(sp[f"b{b}"]["vs_pruned"]["status"] == "met" for b in BATCH_SIZES)
            and all(sp[f"b{b}"]["vs_baseline"]["status"] == "met" for b in BATCH_SIZES)
        )
        goal = (
            "**met**"
            if met
            else "**NOT met**" + (" (float deliverable: see why)" if v["deliverable"] == "float" else "")
        )
        lines.append(
            f"| {m} | {v['deliverable']} | {ours['int8_kernel_fraction']:.0%} | {-v['accuracy_drop_pt']:+.2f} | "
            + " | ".join(fmt_x(sp[f"b{b}"]["vs_pruned"]) for b in BATCH_SIZES)
            + " | "
            + " | ".join(fmt_x(sp[f"b{b}"]["vs_baseline"]) for b in BATCH_SIZES)
            + f" | {goal} |"
        )
    for m in models:
        rows = [r for r in all_rows if r["model"] == m]
        v, by = v_all[m], {r["variant"]: r for r in rows}
        ours, base = by["edgeslim"], by["baseline-fp32"]
        pipe = info["pipelines"][m]
        lines += [
            "",
            f"## {m}",
            "",
            f"Config `{pipe['config']}`; pipeline {pipe['seconds']:.0f} s in this run ({pipe['stage_status']}). "
            "p50 in ms [95% bootstrap interval of the median] (min–max of the per-round medians); accuracy on "
            f"the {ours['test_images']:,}-image test split; INT8 kernels = share of conv/linear nodes on integer "
            "kernels in the graph ONNX Runtime executes.",
            "",
            "| variant | accuracy | size (bytes) | INT8 kernels | p50 b1 ms | p50 b8 ms | edgeslim faster b1 | b8 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if r.get("not_run"):
                lines.append(f"| {r['variant']} | — | — | — | — | — | not run: {r['not_run']} | |")
                continue
            faster = (
                ["", ""]
                if r["variant"] == "edgeslim"
                else [fmt_x(ours.get(f"speedup_vs_{r['variant']}_b{b}")) for b in BATCH_SIZES]
            )
            name = f"**{r['variant']}**" if r["variant"] == "edgeslim" else r["variant"]
            lines.append(
                f"| {name} | {r['accuracy']:.2%} | {r['size_bytes']:,} | {r['int8_kernel_fraction']:.0%} | "
                f"{fmt_ms(r, 1)} | {fmt_ms(r, 8)} | {faster[0]} | {faster[1]} |"
            )
        lines += ["", f"**Deliverable: {ours['deliverable']}.** {ours['reason']}", ""]
        drop_ok = "met" if v["accuracy_ok"] else "NOT met"
        lines.append(
            f"- Accuracy: {ours['accuracy']:.2%} vs {base['accuracy']:.2%} for the FP32 baseline "
            f"({-v['accuracy_drop_pt']:+.2f} pt; goal ≤ {GOAL_MAX_DROP_PT:g} pt drop: {drop_ok})."
        )
        for b in BATCH_SIZES:
            s = v["speed"][f"b{b}"]
            lines.append(
                f"- Batch {b}: {fmt_x(s['vs_pruned'])} vs pruned float (goal {GOAL_VS_PRUNED}x: "
                f"{s['vs_pruned']['status']}); {fmt_x(s['vs_baseline'])} vs the FP32 baseline (goal "
                f"{GOAL_VS_BASELINE}x: {s['vs_baseline']['status']})."
            )
        if v["deliverable"] == "float":
            ff = v["float_fallback"]
            lines.append(
                "- INT8 could not pay here, so the deliverable is the float model"
                + (" (the same file as pruned-fp32)" if ff["same_file_as_pruned_fp32"] else "")
                + "; why: "
                + (ours["reason"] or "NO REASON GIVEN")
                + "."
            )
        lines += ["", "Peers (edgeslim's final model against each, same trained baseline):", ""]
        for name, e in v["peers"].items():
            if "not_run" in e:
                lines.append(f"- `{name}`: not run: {e['not_run']}.")
                continue
            pr = ours["paired_vs"][name]
            acc = (
                f"accuracy {e['accuracy_delta_pt']:+.2f} pt ({'equal or better' if e['accuracy_ok'] else 'worse'}; "
                f"edgeslim alone right on {pr['edgeslim_only_right']}, the peer alone on "
                f"{pr['other_only_right']} test images, McNemar p = {pr['mcnemar_p']:.2f})"
            )
            speed = ", ".join(f"b{b} {fmt_x(e[f'b{b}'])}" for b in BATCH_SIZES)
            if e["won"]:
                lines.append(f"- `{name}`: **edgeslim faster at equal or better accuracy**: {speed}; {acc}.")
            else:
                misses = []
                if not e["accuracy_ok"]:
                    misses.append(f"{-e['accuracy_delta_pt']:.2f} pt less accurate")
                for b in BATCH_SIZES:
                    if e[f"b{b}"]["ratio"] <= 1:
                        misses.append(f"{1 / e[f'b{b}']['ratio']:.2f}x slower at batch {b}")
                lines.append(f"- `{name}`: **edgeslim misses**: {', '.join(misses)}; {speed}; {acc}.")
        lines += ["", "How the peers were built:", ""]
        for r in rows:
            if r["role"] != "peer":
                continue
            settings = "; ".join(f"{k}: {val}" for k, val in (r.get("settings") or {}).items())
            built = f" Built in {r['build_seconds']:.0f} s." if r.get("build_seconds") and not r.get("not_run") else ""
            extra = (
                f" Its pruned float model (before PTQ): {r['pruned_fp32_accuracy']:.2%} test accuracy."
                if r.get("pruned_fp32_accuracy") is not None
                else ""
            )
            status = f" Not run: {r['not_run']}." if r.get("not_run") else ""
            if r.get("exact_int8_unavailable"):
                status += (
                    " ONNX Runtime fails to load it in its exact INT8 mode ('Attempt to replace the existing "
                    "tensor'): scored and timed with the default U8S8 kernels, which can saturate with 8-bit "
                    "weights on this CPU."
                )
            lines.append(f"- `{r['variant']}`: {settings or r['what']}.{built}{extra}{status}")
    lines += [
        "",
        "## How it was measured",
        "",
        "- Latency: `edgeslim.devices.host.measure_interleaved`: for each model and batch size "
        f"({', '.join(map(str, BATCH_SIZES))}), all its variants are loaded in one fresh worker process (ONNX "
        "Runtime CPU, 1 thread, graph optimization and INT8 kernels as the pipeline's host profile: `all`, exact "
        f"INT8 on where a model needs it and ONNX Runtime can load it), warmed up ({info['warmup']} runs) and "
        f"timed in {info['rounds']} rounds of {info['runs_per_round']} runs each (the budget of "
        f"{info['max_seconds']:.0f} s per call ends the rounds early, never before 3), the order rotating every "
        "round; inputs are the first 64 real test images tiled to the batch "
        "(`edgeslim.engine.measure.latency_inputs`). p50 = median of all samples, its 95% interval a seeded "
        "bootstrap (`edgeslim.engine.stats.median_interval`); speed-ups are ratios of medians with bootstrap "
        "intervals (`ratio_of_medians`). The pipelines and peer builds all finish before the first measurement.",
        "- Accuracy: `edgeslim.engine.evaluate.onnx_accuracy` on the test split (never used for any decision). Size: "
        "bytes of the ONNX file.",
        "- INT8 kernel fraction: `edgeslim.quant.coverage.runtime_coverage(path).integer_fraction` on the graph ONNX "
        "Runtime saves after optimizing it with the same session options.",
        "- Static peers calibrate on the same training images as the pipeline's quantize stage (same count and "
        "seed); in a QAT pipeline, 256 images with the run seed.",
        "- Cached: pipelines in `artifacts/zoo/<run>/`, peer models in `artifacts/zoo/peers/<model>/<peer>/` (rebuilt "
        "when their inputs change; a build that failed or ran out of time is remembered in `skipped.json` until "
        "`--retry-skipped`). Olive runs in its own venv (`artifacts/peers/olive-venv`, shared with "
        "`bench/peers.py`, see docs/peers.md). Raw samples: `artifacts/zoo/measurements.json`.",
        "",
        "Every figure is also in docs/zoo.json (one object per model and variant).",
    ]
    text = "\n".join(lines) + "\n"
    (docs / "zoo.md").write_text(text)
    return text


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--skip-peers",
        nargs="*",
        choices=PEERS,
        default=None,
        help="peers not to build (reported as not run); the flag alone skips every peer",
    )
    parser.add_argument(
        "--cached-peers-only",
        nargs="*",
        choices=PEERS,
        default=None,
        help="these peers are reused where an earlier run built them for the same inputs, never built anew",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts/zoo")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs-per-round", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per measurement call (all variants)")
    parser.add_argument("--peer-time-limit", type=float, default=900.0, help="seconds per peer build")
    parser.add_argument("--force", action="store_true", help="rebuild every peer model")
    parser.add_argument("--retry-skipped", action="store_true", help="retry peer builds that failed or timed out")
    args = parser.parse_args()
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    timings: dict[str, float] = {}

    pipelines: list[Pipeline] = []
    variants: dict[str, tuple[list[Method], dict[str, Path]]] = {}
    t = time.perf_counter()
    for name in args.models:
        pipelines.append(run_pipeline(name, MODELS[name], args.out))
    timings["pipelines"] = time.perf_counter() - t
    t = time.perf_counter()
    for p in pipelines:
        methods = build_peers(p, args)
        paths = {"baseline-fp32": p.baseline, "pruned-fp32": p.pruned, "edgeslim": p.final}
        paths |= {m.name: m.path for m in methods if m.path is not None and not m.skipped}
        variants[p.name] = (methods, paths)
    timings["peer_builds"] = time.perf_counter() - t

    t = time.perf_counter()
    timed: dict[str, Any] = {}
    for i, p in enumerate(pipelines):  # the measurements: after every build, one model at a time
        timed[p.name] = measure_model(variants[p.name][1], p, args, BATCH_SIZES if i % 2 == 0 else BATCH_SIZES[::-1])
    timings["latency"] = time.perf_counter() - t

    t = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for p in pipelines:
        methods, paths = variants[p.name]
        rows += make_rows(p, methods, timed[p.name], paths)
    timings["accuracy_and_coverage"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    skip = "" if args.skip_peers is None else " --skip-peers" + "".join(f" {s}" for s in args.skip_peers)
    if args.cached_peers_only:
        skip += " --cached-peers-only" + "".join(f" {s}" for s in args.cached_peers_only)
    info = {
        "date": datetime.date.today().isoformat(),
        "command": f".venv/bin/python bench/zoo.py --models {' '.join(args.models)}{skip} --rounds {args.rounds} "
        f"--runs-per-round {args.runs_per_round} --warmup {args.warmup} --max-seconds {args.max_seconds:g} "
        f"--peer-time-limit {args.peer_time_limit:g}",
        "device": device_facts(),
        "load_average": [load_start, os.getloadavg()[0]],
        "timings_s": timings,
        "rounds": args.rounds,
        "runs_per_round": args.runs_per_round,
        "warmup": args.warmup,
        "max_seconds": args.max_seconds,
        "pipelines": {
            p.name: {
                "config": str(rel(p.config_path)),
                "seconds": p.seconds,
                "stage_status": ", ".join(f"{s.label} {s.status}" for s in p.result.stages),
            }
            for p in pipelines
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measurements.json").write_text(json.dumps({"info": info, "timed": timed}, default=str) + "\n")
    args.docs.mkdir(exist_ok=True)
    (args.docs / "zoo.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(write_docs(rows, info, args.docs))
    log(f"done in {timings['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
