"""``benchmark``: the final model on every device profile of the run, in detail.

- ``host``: every thread count × batch size in a fresh process (warm-up, then a fixed
  number of runs or a time budget): p50/p90/p95/p99, session init, first inference, peak
  memory, throughput and, in separate runs, ONNX Runtime's time per operator type.
- ``arm64-emulated``: the same runner under qemu with onnxruntime's aarch64 build; the
  point is output parity with the host (max abs diff, top-1 agreement). Its latency is
  labelled emulated and never presented as a device latency. Skipped, with the reason,
  where emulation cannot be set up.
- ``remote``: a report made on a real device with ``edgeslim-bench`` and brought back.

Each profile's report (schema ``edgeslim.latency-report/1``) lands beside the measured model,
so the folder is a self-contained deliverable that ``edgeslim compare`` reads.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from edgeslim.config.schema import (
    Arm64EmulatedProfile,
    HostProfile,
    RemoteProfile,
    StrictModel,
    canonical_hash,
    device_label,
)
from edgeslim.devices.edgeslim_bench import device_facts, make_report
from edgeslim.devices.host import measure_latency
from edgeslim.devices.latency_report import load_report
from edgeslim.engine.evaluate import onnx_accuracy
from edgeslim.engine.measure import latency_inputs
from edgeslim.engine.progress import progress_bar
from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult
from edgeslim.engine.store import ONNX, ONNX_INT8, Artifact, sha256_file, write_json
from edgeslim.errors import StageFailed, UserError
from edgeslim.export.onnx_io import onnx_logits

MODEL_FILE = "model.onnx"
EMULATED_NOTE = "emulated under qemu: latency not representative of a real device; parity only"


class BenchmarkConfig(StrictModel):
    threads: list[int] | None = Field(None, description="host profiles: override their thread counts")
    batch_sizes: list[int] | None = Field(None, description="host profiles: override their batch sizes")
    warmup: int = Field(50, ge=0)
    runs: int = Field(500, ge=5)
    max_seconds: float = Field(20.0, gt=0, description="time budget per combination")
    op_profile_runs: int = Field(50, ge=0, description="runs profiled per operator type (0: no per-op profile)")


def report_file(name: str) -> str:
    return f"latency-{name}.json"


class Benchmark(Stage[BenchmarkConfig]):
    name = "benchmark"
    accepts = (ONNX, ONNX_INT8)

    def plan(self, request: PlanRequest) -> StagePlan:
        """Its output is measurements: it depends on the device profiles, the measurement settings and
        the bytes of remote reports (checked here, before anything runs)."""
        config = request.config
        remote = []
        for i, device in enumerate(config.devices):
            if isinstance(device, RemoteProfile):
                try:
                    load_report(device.report)
                except UserError as exc:
                    raise UserError(f"devices[{i}].remote.report: {exc}") from None
                remote.append(device.report)
        return StagePlan(
            output_kind=request.input_kind,
            input_files=tuple(remote),
            key_parts={
                "devices": [d.model_dump(mode="json") for d in config.devices],
                "measure": config.measure.model_dump(mode="json"),
            },
        )

    def run(self, ctx: StageContext, cfg: BenchmarkConfig) -> StageResult:
        model = ctx.out_dir / MODEL_FILE
        shutil.copyfile(ctx.input.file("model"), model)
        accuracy = onnx_accuracy(model, ctx.data, ctx.config.measure.eval_batch_size)
        context = {
            "run": ctx.config.name,
            "stage": f"{ctx.index:02d}-{self.name}",
            "config_hash": canonical_hash(ctx.config.to_plain()),
            "data_fingerprint": ctx.data.fingerprint,
            "accuracy": accuracy,
            "test_samples": len(ctx.data.test),
        }
        label = f"{ctx.config.name}/{context['stage']}"
        reports: dict[str, str] = {}
        details: dict[str, Any] = {"accuracy": accuracy, "latency": [], "parity": {}, "skipped": {}, "remote": {}}
        notes: list[str] = []
        facts = device_facts()
        with tempfile.TemporaryDirectory() as tmp:
            inputs = latency_inputs(ctx.data, Path(tmp))
            for device in ctx.config.devices:
                name = device_label(device)
                if isinstance(device, HostProfile):
                    results = self._host(device, model, inputs)
                    report = make_report(
                        str(model), results, profile=name, kind="host", label=label, context=context, facts=facts
                    )
                    details["latency"] += [latency_row(name, r) for r in results]
                    notes += [host_note(name, r) for r in results]
                elif isinstance(device, Arm64EmulatedProfile):
                    report = self._arm64(ctx, device, model, Path(tmp), label, context, details, notes)
                    if report is None:
                        continue
                else:
                    report = load_report(device.report).model_dump(mode="json", by_alias=True)
                    name = device.name or report["device"]["profile"]
                    details["remote"][name] = remote_summary(report, sha256_file(model))
                    notes.append(remote_note(name, details["remote"][name]))
                reports[name] = report_file(name)
                write_json(ctx.out_dir / reports[name], report)
        details["reports"] = reports
        artifact = Artifact(
            kind=ctx.input.kind,
            directory=ctx.out_dir,
            meta={**ctx.input.meta, "files": {"model": MODEL_FILE, **{f"latency-{n}": f for n, f in reports.items()}}},
        )
        artifact.save()
        return StageResult(artifact, details=details, notes=notes)

    def _host(self, device: HostProfile, model: Path, inputs: Path) -> list[dict[str, Any]]:
        cfg = self.config
        threads = cfg.threads or device.threads
        batches = cfg.batch_sizes or device.batch_sizes
        results = []
        with progress_bar() as bar:
            task = bar.add_task("benchmark", total=len(threads) * len(batches))
            for t in threads:
                for b in batches:
                    bar.update(task, description=f"benchmark · {device.name} · {t} thread(s) · batch {b}")
                    results.append(
                        measure_latency(
                            model,
                            threads=t,
                            batch_size=b,
                            warmup=cfg.warmup,
                            runs=cfg.runs,
                            max_seconds=cfg.max_seconds,
                            graph_optimization=device.graph_optimization,
                            inputs=inputs,
                            profile_runs=cfg.op_profile_runs,
                        )
                    )
                    bar.advance(task)
        return results

    def _arm64(
        self,
        ctx: StageContext,
        device: Arm64EmulatedProfile,
        model: Path,
        tmp: Path,
        label: str,
        context: dict[str, Any],
        details: dict[str, Any],
        notes: list[str],
    ) -> dict[str, Any] | None:
        """Parity on emulated 64-bit ARM; ``None`` (with the reason in the report) when unavailable."""
        from edgeslim.devices import arm64

        name = device.label
        try:
            env = arm64.ensure_env(device.cache_dir, log=lambda line: None)
        except arm64.EmulationUnavailable as exc:
            details["skipped"][name] = str(exc)
            notes.append(f"{name}: skipped, emulation unavailable here: {exc}")
            return None
        x = ctx.data.test.tensors[0][: device.parity_samples]
        samples, outputs = tmp / f"{name}-inputs.npy", tmp / f"{name}-outputs.npy"
        np.save(samples, x.numpy())
        args = ["--inputs", str(samples), "--save-outputs", str(outputs), "--device-profile", name, "--label", label]
        args += ["--threads", *map(str, device.threads), "--batch-sizes", *map(str, device.batch_sizes)]
        args += ["--warmup", str(device.warmup), "--runs", str(device.runs)]
        args += ["--graph-optimization", device.graph_optimization]
        try:
            report = arm64.run_bench(env, device.core, model, args)
        except RuntimeError as exc:
            raise StageFailed(f"{ctx.where}: {name}: the model failed under emulation: {exc}") from None
        host = onnx_logits(model, x, batch_size=ctx.config.measure.eval_batch_size)
        emulated = np.load(outputs, allow_pickle=False)
        parity = {
            "core": device.core,
            "samples": len(x),
            "max_abs_diff": float(np.abs(host - emulated).max()),
            "top1_agreement": float((host.argmax(1) == emulated.argmax(1)).mean()),
            "onnxruntime_arm64": env.onnxruntime,
        }
        details["parity"][name] = parity
        report["context"] = {**context, "parity": parity}
        report["notes"] = [EMULATED_NOTE, *report.get("notes", [])]
        notes.append(
            f"{name} (emulated {device.core}): top-1 agreement with host {parity['top1_agreement']:.2%} on "
            f"{len(x)} test images, max abs diff {parity['max_abs_diff']:.2e}; latency not representative"
        )
        if parity["top1_agreement"] < device.min_top1_agreement:
            raise StageFailed(
                f"{ctx.where}: {name}: outputs on emulated {device.core} agree with the host on top-1 for only "
                f"{parity['top1_agreement']:.2%} (min_top1_agreement: {device.min_top1_agreement})"
            )
        return report


def latency_row(profile: str, r: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": profile,
        "threads": r["threads"],
        "batch_size": r["batch_size"],
        "runs": r["runs"],
        **r["latency_ms"],
        "throughput_per_s": r["throughput_per_s"],
        "session_init_ms": r["session_init_ms"],
        "first_inference_ms": r["first_inference_ms"],
        "peak_rss_mb": r["peak_rss_mb"],
        "top_ops": list(r.get("op_profile") or {})[:3],
    }


def host_note(profile: str, r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    ops = r.get("op_profile") or {}
    top = ", ".join(f"{op} {v['share']:.0%}" for op, v in list(ops.items())[:2])
    return (
        f"{profile} · {r['threads']} thread(s), batch {r['batch_size']}: p50 {lat['p50']:.3f} ms, "
        f"p99 {lat['p99']:.3f} ms, {r['throughput_per_s']:.0f} samples/s ({r['runs']} runs)"
        + (f"; time by op: {top}" if top else "")
    )


def remote_summary(report: dict[str, Any], model_sha: str) -> dict[str, Any]:
    first = report["results"][0]
    return {
        "cpu": report["device"]["cpu"],
        "machine": report["device"]["machine"],
        "created": report["created"],
        "same_model": report["model"]["sha256"] == model_sha,
        "p50_ms": first["latency_ms"]["p50"],
        "threads": first["threads"],
        "batch_size": first["batch_size"],
    }


def remote_note(name: str, s: dict[str, Any]) -> str:
    warning = "" if s["same_model"] else " — WARNING: measured a different model file than this run's final model"
    return (
        f"{name} (remote, {s['cpu']}, {s['machine']}, {s['created']}): p50 {s['p50_ms']:.3f} ms at "
        f"{s['threads']} thread(s), batch {s['batch_size']}{warning}"
    )
