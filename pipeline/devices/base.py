"""Devices behind one protocol: each profile kind of ``devices:`` (host, arm64-emulated, remote) is a
class that takes a ``BenchJob`` and returns a ``DeviceOutcome``; ``device_for`` picks it by the
profile's ``kind``. Adding a device is a profile model in ``edgeslim.config.schema`` and a class
registered here with ``@register_device("<kind>")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeslim.config.schema import Arm64EmulatedProfile, HostProfile, RemoteProfile
from edgeslim.data.batches import Inputs, Split, count, first, save_samples
from edgeslim.devices.edgeslim_bench import make_report, sha256_file
from edgeslim.devices.host import measure_latency
from edgeslim.devices.latency_report import load_report
from edgeslim.engine.evaluate import output_parity
from edgeslim.engine.progress import progress_bar
from edgeslim.errors import StageFailed
from edgeslim.export.onnx_io import onnx_logits

EMULATED_NOTE = "emulated under qemu: latency not representative of a real device; parity only"


@dataclass(frozen=True)
class BenchSettings:
    """How long and how widely to measure (the benchmark stage's settings)."""

    threads: list[int] | None
    batch_sizes: list[int] | None
    warmup: int
    runs: int
    max_seconds: float
    op_profile_runs: int


@dataclass(frozen=True)
class BenchJob:
    """What every device is asked to measure, and the context its report carries."""

    model: Path
    latency_inputs: Path  # real test samples, tiled to the batch size by the runner
    parity_inputs: Inputs | Split  # test samples whose outputs are compared with the host's
    label: str  # e.g. "mnist_cnn/06-benchmark"
    context: dict[str, Any]
    facts: dict[str, Any]  # this host's CPU and versions (edgeslim_bench.device_facts)
    settings: BenchSettings
    eval_batch_size: int
    work_dir: Path
    where: str  # config path for error messages


@dataclass
class DeviceOutcome:
    """A device's report (None when it was skipped) and what the run's report says about it."""

    name: str
    report: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    latency_rows: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] | None = None
    remote: dict[str, Any] | None = None
    skipped: str | None = None


class Device(Protocol):
    name: str

    def benchmark(self, job: BenchJob) -> DeviceOutcome: ...


DEVICE_TYPES: dict[str, Callable[[Any], Device]] = {}


def register_device(kind: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        DEVICE_TYPES[kind] = cls
        return cls

    return add


def device_for(profile: HostProfile | Arm64EmulatedProfile | RemoteProfile) -> Device:
    """The device a ``devices:`` entry describes."""
    return DEVICE_TYPES[profile.kind](profile)


class _ProfileDevice:
    """A device made from its ``devices:`` entry; its name is the profile's label."""

    def __init__(self, profile: Any):
        self.profile = profile
        self.name: str = profile.label  # the name its reports carry


@register_device("host")
class HostDevice(_ProfileDevice):
    """This machine's CPU through ONNX Runtime: every thread count × batch size in a fresh process."""

    profile: HostProfile

    def benchmark(self, job: BenchJob) -> DeviceOutcome:
        s, profile = job.settings, self.profile
        threads, batches = s.threads or profile.threads, s.batch_sizes or profile.batch_sizes
        results = []
        with progress_bar() as bar:
            task = bar.add_task("benchmark", total=len(threads) * len(batches))
            for t in threads:
                for b in batches:
                    bar.update(task, description=f"benchmark · {self.name} · {t} thread(s) · batch {b}")
                    results.append(
                        measure_latency(
                            job.model,
                            threads=t,
                            batch_size=b,
                            warmup=s.warmup,
                            runs=s.runs,
                            max_seconds=s.max_seconds,
                            graph_optimization=profile.graph_optimization,
                            inputs=job.latency_inputs,
                            profile_runs=s.op_profile_runs,
                            exact_int8=profile.exact_int8,
                        )
                    )
                    bar.advance(task)
        report = make_report(
            str(job.model),
            results,
            profile=self.name,
            kind="host",
            label=job.label,
            context=job.context,
            facts=job.facts,
        )
        return DeviceOutcome(
            self.name,
            report,
            notes=[host_note(self.name, r) for r in results],
            latency_rows=[latency_row(self.name, r) for r in results],
        )


@register_device("arm64-emulated")
class Arm64EmulatedDevice(_ProfileDevice):
    """The runner under qemu with onnxruntime's aarch64 build: output parity with the host on 64-bit
    ARM. Its latency is emulated and never presented as a device latency; skipped, with the reason,
    where emulation cannot be set up."""

    profile: Arm64EmulatedProfile

    def benchmark(self, job: BenchJob) -> DeviceOutcome:
        from edgeslim.devices import arm64

        device, name = self.profile, self.name
        try:
            env = arm64.ensure_env(device.cache_dir, log=lambda line: None)
        except arm64.EmulationUnavailable as exc:
            return DeviceOutcome(
                name, None, notes=[f"{name}: skipped, emulation unavailable here: {exc}"], skipped=str(exc)
            )
        x = first(job.parity_inputs, device.parity_samples)
        samples = save_samples(job.work_dir / f"{name}-inputs", x)
        outputs = job.work_dir / f"{name}-outputs.npy"
        args = [
            "--inputs",
            str(samples),
            "--save-outputs",
            str(outputs),
            "--device-profile",
            name,
            "--label",
            job.label,
        ]
        args += ["--threads", *map(str, device.threads), "--batch-sizes", *map(str, device.batch_sizes)]
        args += ["--warmup", str(device.warmup), "--runs", str(device.runs)]
        args += ["--graph-optimization", device.graph_optimization]
        try:
            report = arm64.run_bench(env, device.core, job.model, args)
        except RuntimeError as exc:
            raise StageFailed(f"{job.where}: {name}: the model failed under emulation: {exc}") from None
        host = onnx_logits(job.model, x, batch_size=job.eval_batch_size)
        emulated = np.load(outputs, allow_pickle=False)
        parity = {"core": device.core, **output_parity(host, emulated), "onnxruntime_arm64": env.onnxruntime}
        report["context"] = {**job.context, "parity": parity}
        report["notes"] = [EMULATED_NOTE, *report.get("notes", [])]
        note = (
            f"{name} (emulated {device.core}): top-1 agreement with host {parity['top1_agreement']:.2%} on "
            f"{count(x)} test samples, max abs diff {parity['max_abs_diff']:.2e}; latency not representative"
        )
        if parity["top1_agreement"] < device.min_top1_agreement:
            raise StageFailed(
                f"{job.where}: {name}: outputs on emulated {device.core} agree with the host on top-1 for only "
                f"{parity['top1_agreement']:.2%} (min_top1_agreement: {device.min_top1_agreement})"
            )
        return DeviceOutcome(name, report, notes=[note], parity=parity)


@register_device("remote")
class RemoteDevice(_ProfileDevice):
    """A report made on a real device with ``edgeslim-bench`` and brought back (checked at plan time)."""

    profile: RemoteProfile

    def benchmark(self, job: BenchJob) -> DeviceOutcome:
        report = load_report(self.profile.report).model_dump(mode="json", by_alias=True)
        name = self.profile.name or report["device"]["profile"]
        summary = remote_summary(report, sha256_file(str(job.model)))
        return DeviceOutcome(name, report, notes=[remote_note(name, summary)], remote=summary)


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
