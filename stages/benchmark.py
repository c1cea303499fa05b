"""``benchmark``: the final model on every device profile of the run, in detail.

Each profile is a device (``edgeslim.devices.base``):

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

from pydantic import Field

from edgeslim.config.schema import (
    RemoteProfile,
    StrictModel,
    canonical_hash,
)
from edgeslim.devices.base import BenchJob, BenchSettings, device_for
from edgeslim.devices.edgeslim_bench import device_facts
from edgeslim.devices.latency_report import load_report
from edgeslim.engine.evaluate import onnx_accuracy
from edgeslim.engine.measure import latency_inputs
from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult
from edgeslim.engine.store import ONNX, ONNX_INT8, ONNX_MODEL_FILE, Artifact, write_json
from edgeslim.errors import UserError


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
        model = ctx.out_dir / ONNX_MODEL_FILE
        shutil.copyfile(ctx.input.file("model"), model)
        accuracy = onnx_accuracy(model, ctx.data, ctx.config.measure.eval_batch_size)
        context = {
            "run": ctx.config.name,
            "stage": ctx.label,
            "config_hash": canonical_hash(ctx.config.to_plain()),
            "data_fingerprint": ctx.data.fingerprint,
            "accuracy": accuracy,
            "test_samples": len(ctx.data.test),
        }
        reports: dict[str, str] = {}
        details: dict[str, Any] = {"accuracy": accuracy, "latency": [], "parity": {}, "skipped": {}, "remote": {}}
        notes: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            job = BenchJob(
                model=model,
                latency_inputs=latency_inputs(ctx.data, Path(tmp)),
                parity_inputs=ctx.data.test,
                label=f"{ctx.config.name}/{ctx.label}",
                context=context,
                facts=device_facts(),
                settings=BenchSettings(**cfg.model_dump()),
                eval_batch_size=ctx.config.measure.eval_batch_size,
                work_dir=Path(tmp),
                where=ctx.where,
            )
            for profile in ctx.config.devices:
                outcome = device_for(profile).benchmark(job)
                notes += outcome.notes
                details["latency"] += outcome.latency_rows
                for key, value in (
                    ("parity", outcome.parity),
                    ("remote", outcome.remote),
                    ("skipped", outcome.skipped),
                ):
                    if value is not None:
                        details[key][outcome.name] = value
                if outcome.report is not None:
                    reports[outcome.name] = report_file(outcome.name)
                    write_json(ctx.out_dir / reports[outcome.name], outcome.report)
        details["reports"] = reports
        details["parity_ledger"] = [  # the last hops: the host's outputs against each emulated device's
            {"hop": f"ONNX (host) -> {name} (arm64 emulated, {parity['core']})", **parity, "split": "test"}
            for name, parity in details["parity"].items()
        ]
        artifact = Artifact(
            kind=ctx.input.kind,
            directory=ctx.out_dir,
            meta={
                **ctx.input.meta,
                "files": {"model": ONNX_MODEL_FILE, **{f"latency-{n}": f for n, f in reports.items()}},
            },
        )
        artifact.save()
        return StageResult(artifact, details=details, notes=notes)
