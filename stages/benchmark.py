"""``benchmark``: the final model's latency on the device profile, in detail.

Every combination of thread count and batch size runs in a fresh process: warm-up, then a
fixed number of runs or a time budget. Reports p50/p90/p95/p99/mean/std, session init and
first-inference time, peak memory and throughput. The measured model is kept beside its
report so the folder is a self-contained deliverable.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pydantic import Field

from pipeline.artifacts import ONNX, ONNX_INT8, Artifact, write_json
from pipeline.benchmark import measure_latency
from pipeline.config import StrictModel
from pipeline.measure import latency_inputs
from pipeline.progress import progress_bar
from pipeline.stage import Stage, StageContext, StageResult, register

MODEL_FILE = "model.onnx"
REPORT_FILE = "latency.json"


class BenchmarkConfig(StrictModel):
    threads: list[int] | None = Field(None, description="default: the device profile's")
    batch_sizes: list[int] | None = Field(None, description="default: the device profile's")
    warmup: int = Field(50, ge=0)
    runs: int = Field(500, ge=5)
    max_seconds: float = Field(20.0, gt=0, description="time budget per combination")


@register
class Benchmark(Stage):
    name = "benchmark"
    Config = BenchmarkConfig
    accepts = (ONNX, ONNX_INT8)

    def run(self, ctx: StageContext) -> StageResult:
        cfg: BenchmarkConfig = self.config  # type: ignore[assignment]
        device = ctx.config.device
        threads = cfg.threads or device.threads
        batches = cfg.batch_sizes or device.batch_sizes
        model = ctx.out_dir / MODEL_FILE
        shutil.copyfile(ctx.input.file("model"), model)
        results = []
        with tempfile.TemporaryDirectory() as tmp, progress_bar() as bar:
            inputs = latency_inputs(ctx.data, Path(tmp))
            task = bar.add_task("benchmark", total=len(threads) * len(batches))
            for t in threads:
                for b in batches:
                    bar.update(task, description=f"benchmark · {t} thread(s) · batch {b}")
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
                        )
                    )
                    bar.advance(task)
        write_json(ctx.out_dir / REPORT_FILE, {"device_profile": device.model_dump(mode="json"), "results": results})
        artifact = Artifact(
            kind=ctx.input.kind,
            directory=ctx.out_dir,
            meta={**ctx.input.meta, "files": {"model": MODEL_FILE, "latency": REPORT_FILE}},
        )
        artifact.save()
        table = [
            {
                "threads": r["threads"],
                "batch_size": r["batch_size"],
                "runs": r["runs"],
                **r["latency_ms"],
                "throughput_per_s": r["batch_size"] * 1e3 / r["latency_ms"]["p50"],
                "session_init_ms": r["session_init_ms"],
                "first_inference_ms": r["first_inference_ms"],
                "peak_rss_mb": r["peak_rss_mb"],
            }
            for r in results
        ]
        notes = [
            f"{r['threads']} thread(s), batch {r['batch_size']}: p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms, "
            f"{r['throughput_per_s']:.0f} samples/s ({r['runs']} runs)"
            for r in table
        ]
        return StageResult(artifact, details={"latency": table}, notes=notes)
