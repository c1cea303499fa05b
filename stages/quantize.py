"""``quantize``: ONNX Runtime post-training quantization of a float ONNX model (INT8, or INT4 weights).

``method``:

* ``static`` (default): INT8 weights and activations; ``format`` QDQ or QOperator, per-channel or
  per-tensor weights, U8S8 or S8S8 (``scheme``), activation ranges calibrated with MinMax,
  Entropy or Percentile on training images.
* ``dynamic``: INT8 weights, activations quantized at run time. For Linear-heavy models: ONNX
  Runtime's ConvInteger ran 5-20x slower than FP32 on convolutions here, so a note warns.
* ``int4``: weight-only INT4 of Linear weights (``MatMulNBits``, ``block_size``); refused for
  models without Linear layers. The dynamo exporter emits ``Gemm`` for ``nn.Linear``, which
  ONNX Runtime's INT4 quantizer skips: eligible Gemm nodes become MatMul (+ Add) first.
* ``optimum``: Hugging Face optimum's ``ORTQuantizer``, dynamic INT8 with one of its CPU presets
  (``optimum_preset``: ``avx512_vnni`` (default), ``avx512``, ``avx2`` (uint8 weights), ``arm64``),
  per-channel unless ``per_channel: false``; for transformers exported to ONNX. It quantizes what
  ``dynamic`` does and also attention's activation-by-activation MatMuls. 7-bit weights
  (``reduce_range``) only with ``avx512``/``avx2``, where ``reduce_range: auto`` gives them if the
  U8S8 kernels saturate. Not an ``auto`` candidate (see :mod:`edgeslim.quant.methods`).
* ``auto``: measures the candidates that apply (validation accuracy, latency on the run's host
  profile in a fresh process) and keeps the fastest within ``auto.max_accuracy_drop``.

``mixed_precision`` quantizes each weighted node alone to rank them by sensitivity, then keeps
the most sensitive ones FP32 until the validation accuracy drop fits its budget. ``exclude_nodes``
does that by hand, and the accuracy guard's fallback (:meth:`Quantize.fallback`) uses it.
``optimize`` runs ONNX Runtime's graph optimizer before quantizing (``quant_pre_process``), after
(the saved optimized graph is the artifact), both, or not at all.

``backend: neural-compressor`` instead quantizes the PyTorch model (put the stage before
``export``) with Intel Neural Compressor's accuracy-aware tuning (``neural_compressor.torch``
autotune over static INT8 configs, with FP32 fallback of sensitive layers), lists every trial,
and exports the chosen model as QDQ INT8 ONNX. When no trial meets ``inc.tolerable_loss`` it
says so and keeps the most accurate trial (it never ends with nothing).

Calibration uses training images and every decision the validation split: the test split is
never seen. A model that is already INT8 (from QAT) is refused: quantizing twice only loses
accuracy. The work happens in :mod:`pipeline.ort_quant`; this class only orchestrates.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import onnx
from pydantic import Field, model_validator

from edgeslim.config.schema import HostProfile, StrictModel
from edgeslim.data.batches import count
from edgeslim.devices import edgeslim_bench
from edgeslim.devices.host import measure_interleaved
from edgeslim.engine.measure import latency_inputs
from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult, onnx_artifact
from edgeslim.engine.store import ONNX, ONNX_INT8, ONNX_MODEL_FILE, TORCH
from edgeslim.errors import UserError
from edgeslim.export.onnx_io import check_onnx_file, exact_int8_unavailable, load_onnx, needs_exact_int8
from edgeslim.quant.coverage import Coverage, op_times, runtime_coverage, why_int8_loses
from edgeslim.quant.methods import (
    OPTIMUM_REDUCE_RANGE_PRESETS,
    Recipe,
    optimum_installed,
    optimum_missing,
    optimum_versions,
    recipe_from,
)
from edgeslim.quant.ort import (
    ACCURACY_EPS,
    KEEP_FLOAT,
    Candidate,
    QuantBench,
    Timer,
    auto_select,
    keep_float_candidate,
    layer_sqnr,
    ort_optimize,
    quantized_weight_count,
    rank_sensitivity,
    search_mixed_precision,
)
from edgeslim.quant.parity import quantized_hops

SCHEMES = {"u8s8": ("uint8", "int8"), "s8s8": ("int8", "int8")}


class MixedPrecisionConfig(StrictModel):
    """Keep the most quantization-sensitive nodes FP32 until the validation accuracy budget is met."""

    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="vs the float input on the validation split, as a fraction (0.01 = 1 point)"
    )
    proxy: Literal["accuracy", "output_error", "sqnr"] = Field(
        "accuracy",
        description="rank nodes by validation accuracy drop or logits MSE vs float on calibration data, each node "
        "quantized alone; or by each node's output SQNR with everything quantized (one quantization: cheapest)",
    )
    max_fp32_nodes: int = Field(8, ge=0, le=10_000, description="at most this many nodes kept FP32 by the search")


class TimingConfig(StrictModel):
    """Side-by-side timing on the run's host profile (first thread count and batch size): every
    model timed in turn, ``runs_per_round`` runs each, for ``rounds`` rounds, in one fresh process."""

    warmup: int = Field(10, ge=0, description="untimed runs per model first")
    rounds: int = Field(10, ge=3, le=1000)
    runs_per_round: int = Field(10, ge=1, le=1000)
    max_seconds: float = Field(10.0, gt=0, description="stop after the round that passes this (at least 3 rounds)")


class AutoConfig(StrictModel):
    """``method: auto``: the fastest candidate within the accuracy budget wins; keeping the float
    model is always a candidate."""

    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="vs the float input on the validation split")
    mixed_precision: bool = Field(
        True,
        description="when no candidate meets the budget, keep sensitive nodes FP32 in the most accurate one "
        "(proxy and max_fp32_nodes from the stage's mixed_precision settings; the budget is auto's)",
    )


class IncConfig(StrictModel):
    tolerable_loss: float = Field(0.01, ge=0, le=1, description="absolute validation accuracy loss vs float")
    max_trials: int = Field(8, ge=1, le=100)


class QuantizeConfig(StrictModel):
    backend: Literal["onnxruntime", "neural-compressor"] = Field(
        "onnxruntime", description="neural-compressor: accuracy-aware tuning of the PyTorch model (before export)"
    )
    inc: IncConfig = Field(default_factory=IncConfig, description="neural-compressor backend settings")
    method: Literal["static", "dynamic", "int4", "optimum", "auto"] = "static"
    # static (and dynamic: per_channel, weight_type, reduce_range)
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    scheme: Literal["u8s8", "s8s8"] | None = Field(None, description="shorthand for activation_type + weight_type")
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool | Literal["auto"] = Field(
        "auto",
        description="7-bit weights; auto: on x86 CPUs without VNNI, where ONNX Runtime's fast U8S8 kernels are "
        "then exact (8-bit weights need its slower exact mode there)",
    )
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = Field(99.999, gt=0, le=100, description="calibration: percentile only")
    calibration_samples: int = Field(256, ge=1, le=100_000, description="training images")
    # int4
    block_size: int = Field(32, ge=16, le=4096, description="int4: weights per scale along the input axis")
    symmetric: bool = Field(False, description="int4: no zero points")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4,
        description="int4: MatMulNBits compute type: 4 int8 (about 3x faster than 0/1 on x86 here), 1 fp32, "
        "2 fp16, 3 bf16, 0 ONNX Runtime's default",
    )
    # optimum (and per_channel, reduce_range)
    optimum_preset: Literal["avx512_vnni", "avx512", "avx2", "arm64"] = Field(
        "avx512_vnni",
        description="optimum: AutoQuantizationConfig's CPU preset; avx2 has uint8 weights; 7-bit weights "
        "(reduce_range) only with avx512 and avx2",
    )
    # all methods
    optimize: Literal["none", "before", "after", "both"] = Field(
        "before", description="ONNX Runtime graph optimization: before (quant_pre_process) and/or after quantizing"
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="node names kept FP32")
    exclude_most_sensitive: int = Field(
        0, ge=0, description="also keep the N nodes ranked most sensitive FP32 (what the guard's fallback sets)"
    )
    mixed_precision: MixedPrecisionConfig | None = None
    auto: AutoConfig = Field(default_factory=AutoConfig)
    never_slower: bool = Field(
        True,
        description="time the quantized model side by side with its float input and ship the float model "
        "when INT8 is slower beyond the noise, or within it but slower at the median after a second measurement "
        "(auto always does: keeping float is one of its candidates)",
    )
    timing: TimingConfig = Field(default_factory=TimingConfig, description="never_slower's and auto's timing")
    fallback_nodes_per_attempt: int = Field(2, ge=1, description="accuracy guard fallback: more FP32 nodes per try")

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        """``preprocess: true|false`` (old key) -> ``optimize``; ``scheme`` -> activation/weight types;
        ``auto.warmup/runs/max_seconds`` (old keys) -> ``timing``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        auto = data.get("auto")
        if isinstance(auto, dict) and any(k in auto for k in ("warmup", "runs", "max_seconds")):
            auto, timing = dict(auto), dict(data.get("timing") or {})
            if "warmup" in auto:
                timing.setdefault("warmup", auto.pop("warmup"))
            if "runs" in auto:
                timing.setdefault("runs_per_round", max(1, -(-int(auto.pop("runs")) // 10)))
            if "max_seconds" in auto:
                timing.setdefault("max_seconds", auto.pop("max_seconds"))
            data["auto"], data["timing"] = auto, timing
        if "preprocess" in data:
            if "optimize" in data:
                raise ValueError("preprocess is the old name of optimize (true = before, false = none); set only one")
            old = data.pop("preprocess")
            if not isinstance(old, bool):
                raise ValueError(f"preprocess: must be true or false (got {old!r}); it is now optimize: before | none")
            data["optimize"] = "before" if old else "none"
        scheme = data.get("scheme")
        if isinstance(scheme, str) and scheme in SCHEMES:
            for key, value in zip(("activation_type", "weight_type"), SCHEMES[scheme], strict=True):
                if data.get(key, value) != value:
                    raise ValueError(f"scheme: {scheme} means {key}: {value} (got {key}: {data[key]}); set one of them")
                data[key] = value
        return data

    @model_validator(mode="after")
    def _compatible(self) -> QuantizeConfig:
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size: must be a power of two >= 16 (got {self.block_size})")
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError("activation_type: int8 with weight_type: uint8 is not supported by ONNX Runtime")
        if self.method in ("dynamic", "optimum") and self.activation_type != "uint8":
            raise ValueError("activation_type: dynamic quantization always uses uint8 activations (static only)")
        if self.method == "optimum":
            if self.weight_type != "int8":
                raise ValueError(
                    "weight_type: method: optimum takes its weight type from optimum_preset "
                    "(avx2: uint8, the others int8)"
                )
            if self.reduce_range is True and self.optimum_preset not in OPTIMUM_REDUCE_RANGE_PRESETS:
                raise ValueError(
                    f"reduce_range: optimum_preset: {self.optimum_preset} always uses 8-bit weights; "
                    f"7-bit weights need optimum_preset: {' or '.join(OPTIMUM_REDUCE_RANGE_PRESETS)}"
                )
        preset_default = type(self).model_fields["optimum_preset"].default
        if self.optimum_preset != preset_default and self.method not in ("optimum", "auto"):
            raise ValueError("optimum_preset: only used with method: optimum")
        percentile_default = type(self).model_fields["percentile"].default  # to_plain() writes it back unchanged
        if self.percentile != percentile_default and self.calibration != "percentile" and self.method != "auto":
            raise ValueError("percentile: only used with calibration: percentile")
        if self.method == "auto" and self.exclude_most_sensitive:
            raise ValueError(
                "exclude_most_sensitive: not used by method: auto (auto.mixed_precision searches FP32 nodes)"
            )
        return self

    def recipe(self) -> Recipe:
        """The method's own config (a discriminated union on ``method``) from this flat block."""
        return recipe_from(self.model_dump(), "static" if self.method == "auto" else self.method)


@dataclass
class _Outcome:
    """What a method produced: the model file (in the work folder), its recipe and its report lines."""

    path: Path
    recipe: Recipe | None  # None: the float input ships unchanged
    fp32_nodes: list[str]
    val_accuracy: float
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Quantize(Stage[QuantizeConfig]):
    name = "quantize"
    accepts = (ONNX, ONNX_INT8, TORCH)
    # Never silently worse: at most 1 point below the float input on validation; else keep more
    # nodes FP32, and if nothing meets it, pass the float model on (the report says so).
    default_guard: ClassVar[dict[str, Any] | None] = {
        "max_accuracy_drop": 0.01,
        "reference": "previous",
        "on_breach": "fallback",
        "on_exhausted": "keep_previous",
    }

    def __init__(self, config: QuantizeConfig, ranking: list[dict[str, Any]] | None = None):
        super().__init__(config)
        self._ranking = ranking  # a sensitivity table handed over by fallback(), so it is not recomputed

    def plan(self, request: PlanRequest) -> StagePlan:
        input_kind, where = request.input_kind, request.where
        inc = self.config.backend == "neural-compressor"
        if inc and input_kind != TORCH:
            raise UserError(
                f"{where}.backend: neural-compressor quantizes the PyTorch model; put this stage before export"
            )
        if not inc and input_kind == TORCH:
            raise UserError(f"{where}: needs an ONNX model; add '- export' before it (or backend: neural-compressor)")
        if input_kind == ONNX_INT8:
            raise UserError(
                f"{where}: the model is already INT8 (quantization-aware training); "
                "remove this stage or set finetune.qat: false"
            )
        if self.config.method == "optimum" and not optimum_installed():
            raise UserError(f"{where}.method: optimum needs Hugging Face optimum with optimum-onnx installed")
        key_parts = {}
        if self.config.method == "auto" or self.config.never_slower:  # the choice depends on where it is timed
            host = request.config.host
            key_parts["host"] = {
                "threads": host.threads[0],
                "batch_size": host.batch_sizes[0],
                "opt": host.graph_optimization,
            }
        if self.config.reduce_range == "auto" or self.config.method == "auto":  # 7-bit weights where needed
            key_parts["u8s8_saturates"] = edgeslim_bench.u8s8_saturates()
        if self.config.method == "optimum":  # its quantizer's settings are optimum's: another version, another model
            key_parts["optimum"] = optimum_versions()
        return StagePlan(output_kind=ONNX_INT8, key_parts=key_parts)

    def _neural_compressor(self, ctx: StageContext) -> StageResult:
        """Accuracy-aware INT8 of the PyTorch model with Neural Compressor, exported as QDQ ONNX."""
        from edgeslim.quant import inc as inc_backend

        cfg = self.config
        reason = inc_backend.inc_available()
        if reason is not None:
            raise UserError(f"{ctx.where}.backend: neural-compressor is not usable here: {reason}")
        if isinstance(ctx.example(), dict):
            raise UserError(
                f"{ctx.where}.backend: neural-compressor here quantizes one-input models; this model takes named "
                f"inputs ({', '.join(ctx.example())}): use backend onnxruntime"
            )
        model = ctx.models.load(ctx.input)
        result = inc_backend.autotune_int8(
            model,
            ctx.example(),
            ctx.calibration_samples(cfg.calibration_samples)[0],
            ctx.data.val,
            tolerable_loss=cfg.inc.tolerable_loss,
            max_trials=cfg.inc.max_trials,
            seed=ctx.seed,
        )
        inc_backend.export_int8_onnx(result.model, ctx.example(), ctx.out_dir / ONNX_MODEL_FILE)
        artifact = onnx_artifact(ctx, ONNX_INT8, {"quantized": True, "backend": "neural-compressor"})
        trials = [dataclasses.asdict(t) for t in result.trials]
        chosen = result.trials[result.chosen]
        verdict = "met" if result.budget_met else "NOT met by any trial; kept the most accurate"
        return StageResult(
            artifact,
            details={
                "backend": "neural-compressor",
                "trials": trials,
                "chosen": result.chosen,
                "budget_met": result.budget_met,
                "float_val_accuracy": result.float_accuracy,
            },
            notes=[
                f"Neural Compressor tried {len(trials)} config(s); tolerable loss "
                f"{cfg.inc.tolerable_loss * 100:.2f} pt {verdict}: trial {chosen.index} ({chosen.config}) "
                f"val accuracy {chosen.accuracy:.2%} vs float {result.float_accuracy:.2%}"
            ],
        )

    def run(self, ctx: StageContext, cfg: QuantizeConfig) -> StageResult:
        if cfg.backend == "neural-compressor":
            return self._neural_compressor(ctx)
        if cfg.method == "optimum" and (missing := optimum_missing()) is not None:
            raise UserError(f"{ctx.where}.method: optimum: {missing}")
        source = ctx.input.file("model")
        check_onnx_file(source)
        samples = ctx.calibration_samples(cfg.calibration_samples)[0]
        out = ctx.out_dir / ONNX_MODEL_FILE
        host = ctx.config.host
        with tempfile.TemporaryDirectory(prefix=".quantize-", dir=ctx.out_dir) as tmp:
            bench = QuantBench(
                source,
                Path(tmp),
                samples,
                ctx.data.val,
                preprocess_first=cfg.optimize in ("before", "both"),
                eval_batch_size=ctx.config.measure.eval_batch_size,
            )
            self._check_exclude_nodes(ctx, bench)
            timer = self._timer(ctx, bench.work_dir)
            outcome = self._auto(bench, timer, host) if cfg.method == "auto" else self._fixed(ctx, bench, cfg.recipe())
            outcome.notes[:0] = bench.notes
            if cfg.reduce_range == "auto" and getattr(outcome.recipe, "reduce_range", False):
                outcome.notes.append(
                    "7-bit weights (reduce_range: auto): on this CPU (x86 without VNNI) ONNX Runtime's default "
                    "U8S8 kernels saturate with 8-bit weights; with 7-bit weights they are exact, and faster than "
                    "its exact INT8 mode"
                )
            float_val_accuracy = bench.float_val_accuracy
            quantizable = bench.nodes(outcome.recipe.method if outcome.recipe else cfg.recipe().method)
            if outcome.recipe is not None and outcome.recipe.method == "static":
                sqnr = layer_sqnr(bench, outcome.path)  # per-layer diagnosis of the INT8 model
                outcome.details["layer_sqnr"] = sqnr
                if sqnr:
                    worst = ", ".join(f"{r['node']} ({r['op_type']}) {r['sqnr_db']:.1f} dB" for r in sqnr[:3])
                    outcome.notes.append(f"lowest output SQNR vs float (calibration samples): {worst}")
            if outcome.recipe is not None and cfg.optimize in ("after", "both"):
                optimized = ort_optimize(outcome.path, bench.work_dir / "optimized.onnx")
                outcome.val_accuracy, _ = bench.evaluate(optimized)  # judge the file that ships
                outcome.notes.append(
                    "saved ONNX Runtime's optimized graph (extended level: quantized ops fused into contrib ops "
                    "such as QLinearConv/QGemm, so the file needs ONNX Runtime)"
                )
                outcome.path = optimized
            if outcome.recipe is not None and host.exact_int8 and exact_int8_unavailable(outcome.path):
                outcome.notes.append(
                    "ONNX Runtime fails to load this INT8 model in its exact INT8 mode (an ORT bug with some "
                    "graphs): it was scored and timed with the default kernels, which can saturate on x86 "
                    "without VNNI; use reduce_range: true (7-bit weights) to avoid that"
                )
            # structure only (deterministic): the time spent in Q/DQ is the benchmark stage's op profile
            coverage = runtime_coverage(
                bench.float_model if outcome.recipe is None else outcome.path, host.graph_optimization, host.exact_int8
            )
            if outcome.recipe is not None and outcome.recipe.method == "static":
                hops = quantized_hops(
                    bench.float_model, outcome.path, bench.val, host.graph_optimization, host.exact_int8, 0.99
                )
                outcome.details["parity_ledger"] = [{**h.row(), "split": "validation"} for h in hops]
                outcome.notes += [f"parity (validation split): {h.line()}" for h in hops]
                outcome.notes += [
                    f"warning: ONNX Runtime's fusion changes {1 - h.parity['top1_agreement']:.2%} of top-1 answers "
                    f"(first diverging node: {h.first_divergent_node})"
                    for h in hops
                    if not h.passed
                ]
            if outcome.recipe is not None and cfg.method != "auto" and cfg.never_slower:
                self._never_slower(bench, outcome, timer, coverage, host)
            if outcome.recipe is None:  # the float input ships unchanged
                onnx.save(load_onnx(source), str(out))
            else:
                os.replace(outcome.path, out)
        quantized = outcome.recipe is not None
        meta = {"quantized": quantized, "method": outcome.recipe.method if quantized else "float"}
        artifact = onnx_artifact(ctx, ONNX_INT8 if quantized else ONNX, meta)
        drop = float_val_accuracy - outcome.val_accuracy
        n_quantized = quantized_weight_count(load_onnx(out))
        details = {
            "method": cfg.method,
            "recipe": outcome.recipe.settings() if quantized else None,
            "deliverable": "int8" if quantized else "float",
            "settings": cfg.model_dump(mode="json"),
            "calibration_samples": count(samples),
            "quantizable_nodes": [{"node": n.name, "op_type": n.op_type} for n in quantizable],
            "fp32_nodes": outcome.fp32_nodes,
            "quantized_weights": n_quantized,
            "float_val_accuracy": float_val_accuracy,
            "val_accuracy": outcome.val_accuracy,
            "val_accuracy_drop": drop,
            "int8_coverage": coverage.to_dict(),
            **outcome.details,
        }
        notes = [
            *outcome.notes,
            ("" if quantized else "the rejected quantized model's ")
            + coverage.summary()
            + " (the graph ONNX Runtime executes on the host profile)",
            f"validation accuracy {outcome.val_accuracy:.2%} vs {float_val_accuracy:.2%} for the float input "
            f"({-drop * 100:+.2f} pt); {n_quantized} weight tensors quantized, "
            f"{len(outcome.fp32_nodes)} node(s) kept FP32",
        ]
        if quantized and not coverage.is_int8:
            notes.append(
                "warning: most convolutions/linears of this model still run in float in ONNX Runtime: "
                "it is not an INT8 model in practice"
            )
        return StageResult(artifact, details=details, notes=notes)

    # ------------------------------------------------------------ timing

    def _timer(self, ctx: StageContext, work_dir: Path) -> Timer:
        """Times model files side by side on the run's host profile (real test inputs)."""
        host, timing = ctx.config.host, self.config.timing
        inputs = latency_inputs(ctx.data, work_dir)

        def timer(paths: Sequence[Path]) -> list[list[float]]:
            result = measure_interleaved(
                list(paths),
                threads=host.threads[0],
                batch_size=host.batch_sizes[0],
                graph_optimization=host.graph_optimization,
                exact_int8=host.exact_int8,
                inputs=inputs,
                rounds=timing.rounds,
                runs_per_round=timing.runs_per_round,
                warmup=timing.warmup,
                max_seconds=timing.max_seconds,
            )
            return result["samples_ms"]

        return timer

    def _never_slower(
        self, bench: QuantBench, outcome: _Outcome, timer: Timer, coverage: Coverage, host: HostProfile
    ) -> None:
        """Time INT8 against its float input; ship float when INT8 is slower beyond the noise, saying
        which ops make it lose (profiled by op type on the host profile)."""
        exact_int8 = host.exact_int8 and needs_exact_int8(outcome.path)  # as it was timed
        import numpy as np

        from edgeslim.engine.stats import FASTER, SLOWER, noise_verdict, speedup_interval

        keep = keep_float_candidate(bench)
        assert outcome.recipe is not None
        int8 = Candidate(  # already quantized and scored: only its timing is new
            "int8",
            outcome.recipe,
            outcome.val_accuracy,
            bench.float_val_accuracy - outcome.val_accuracy,
            float("nan"),
            outcome.path.stat().st_size,
            outcome.path,
            list(outcome.fp32_nodes),
        )
        samples = [np.asarray(s) for s in timer([keep.path, int8.path])]
        ci = speedup_interval(*samples)
        verdict = {FASTER: "faster", SLOWER: "slower"}.get(noise_verdict(ci, 0.0), "within noise")
        measurements = 1
        if verdict == "within noise":  # a busy machine must not decide: measure again, pool both
            samples = [
                np.concatenate([a, np.asarray(b)]) for a, b in zip(samples, timer([keep.path, int8.path]), strict=True)
            ]
            ci = speedup_interval(*samples)
            verdict = {FASTER: "faster", SLOWER: "slower"}.get(noise_verdict(ci, 0.0), "within noise")
            measurements = 2
        keep.p50_ms, int8.p50_ms = (float(np.median(s)) for s in samples)
        speedup = keep.p50_ms / int8.p50_ms
        outcome.details["latency_check"] = {
            "float_p50_ms": keep.p50_ms,
            "int8_p50_ms": int8.p50_ms,
            "speedup": speedup,
            "speedup_interval": list(ci),
            "verdict": verdict,
            "measurements": measurements,
        }
        ratio = f"{speedup:.2f}x [{ci[0]:.2f}-{ci[1]:.2f}]"
        pooled = " (two measurements pooled)" if measurements > 1 else ""
        bits = "INT4" if getattr(outcome.recipe, "method", None) == "int4" else "INT8"
        # INT8 ships when it is faster, or within the noise and not slower at the median: its size is then free
        if verdict == "faster" or (verdict == "within noise" and speedup >= 1.0):
            outcome.notes.append(
                f"{bits} p50 {int8.p50_ms:.3f} ms vs {keep.p50_ms:.3f} ms for the float input: {ratio} "
                f"({verdict}; side by side, interleaved rounds{pooled})"
            )
            return
        judged = "slower beyond the noise" if verdict == "slower" else f"not faster: slower at the median{pooled}"
        blockers = coverage.float_islands or {}
        if blockers:
            why = "ops without integer kernels between Q/DQ: " + ", ".join(
                f"{op} x{n}" for op, n in sorted(blockers.items())
            )
        elif coverage.integer_fraction < 1:
            why = f"only {coverage.integer_fraction:.0%} of convs/linears run in integer kernels"
        else:  # nothing left in float: the integer kernels themselves lose on this CPU and model
            why = (
                f"all convs/linears run in integer kernels with {coverage.qdq_nodes} Q/DQ node(s), yet ONNX Runtime's "
                f"{bits} kernels are slower than its float ones for this model on this CPU"
                + (" (exact INT8 mode, needed on x86 without VNNI for 8-bit weights)" if exact_int8 else "")
            )
        outcome.notes.append(
            f"kept the float model: {bits} ran {ratio} vs its float input ({judged}; p50 "
            f"{int8.p50_ms:.3f} vs {keep.p50_ms:.3f} ms); {why}"
        )
        outcome.details["rejected_int8"] = {
            "recipe": outcome.recipe.settings(),
            "val_accuracy": outcome.val_accuracy,
            **_op_time_diagnosis(bench, outcome.path, outcome.notes, host),
        }
        outcome.path, outcome.recipe, outcome.val_accuracy = keep.path, None, keep.val_accuracy
        outcome.fp32_nodes = []

    # ------------------------------------------------------------ methods

    def _check_exclude_nodes(self, ctx: StageContext, bench: QuantBench) -> None:
        """A misspelt node name would silently quantize that node: refuse it, naming the real ones."""
        cfg = self.config
        known = {n.name for n in bench.nodes("static")}
        unknown = [n for n in cfg.exclude_nodes if n not in known]
        if unknown:
            raise UserError(
                f"{ctx.where}.exclude_nodes: no quantizable node named {', '.join(map(repr, unknown))}; "
                f"quantizable nodes: {', '.join(sorted(known)) or 'none'}"
            )

    def _fixed(self, ctx: StageContext, bench: QuantBench, recipe: Recipe) -> _Outcome:
        """One method with its settings, plus optional sensitivity-driven FP32 nodes."""
        cfg = self.config
        nodes = bench.nodes(recipe.method)
        notes = [
            f"{recipe.label()}"
            + (f", calibrated on {count(bench.calibration)} training samples" if recipe.method == "static" else "")
        ]
        if recipe.method == "int4" and not nodes:
            raise UserError(
                f"{ctx.where}.method: int4 quantizes Linear (MatMul/Gemm) weights and this model has none; "
                "use method: static"
            )
        convs = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose")]
        if recipe.method in ("dynamic", "optimum") and convs:
            notes.append(
                f"warning: dynamic quantization turns the model's {len(convs)} Conv layers into ConvInteger, which "
                "ran 5-20x slower than FP32 in ONNX Runtime on x86 here; prefer method: static (or auto) for "
                "convolutional models"
            )
        eight_bit = recipe.method == "optimum" and recipe.weight_type == "int8" and not recipe.reduce_range
        if eight_bit and edgeslim_bench.u8s8_saturates():
            notes.append(
                f"optimum_preset: {recipe.preset} keeps 8-bit weights, which ONNX Runtime's default U8S8 "
                "kernels saturate on this CPU (x86 without VNNI): exact only in its slower exact INT8 mode "
                "(host.exact_int8); optimum_preset: avx512 with reduce_range: auto gives 7-bit weights"
            )
        exclude = list(cfg.exclude_nodes)
        details: dict[str, Any] = {}
        ranking = self._ranking
        if ranking is None and (cfg.mixed_precision is not None or cfg.exclude_most_sensitive):
            proxy = cfg.mixed_precision.proxy if cfg.mixed_precision is not None else "sqnr"
            ranking = rank_sensitivity(bench, recipe, proxy, exclude=exclude)
        if cfg.exclude_most_sensitive and ranking:
            extra = [r["node"] for r in ranking if r["node"] not in exclude][: cfg.exclude_most_sensitive]
            exclude += extra
            notes.append(f"kept the {len(extra)} most sensitive nodes FP32: {', '.join(extra)}")
        if cfg.mixed_precision is not None and ranking is not None:
            mp_cfg = cfg.mixed_precision
            search = search_mixed_precision(
                bench,
                recipe,
                [r["node"] for r in ranking],
                max_accuracy_drop=mp_cfg.max_accuracy_drop,
                max_fp32_nodes=mp_cfg.max_fp32_nodes,
                exclude=exclude,
            )
            exclude += search.best.fp32_nodes
            path, accuracy = search.best.path, search.best.val_accuracy
            details["budget_met"] = search.budget_met
            details["mixed_precision"] = {
                "max_accuracy_drop": mp_cfg.max_accuracy_drop,
                "proxy": mp_cfg.proxy,
                "trials": [t.row() for t in search.trials],
            }
            notes.append(
                _mixed_precision_note(
                    search.budget_met,
                    search.best.fp32_nodes,
                    search.best.accuracy_drop,
                    mp_cfg.max_accuracy_drop,
                    len(search.trials),
                )
            )
        else:
            path = bench.quantize(recipe, bench.trial_path("final"), exclude=exclude)
            accuracy, _ = bench.evaluate(path)
        if recipe.method == "int4":
            others = len(bench.nodes("static")) - len(nodes)
            notes.append(
                f"INT4 weight-only: {quantized_weight_count(load_onnx(path))} of {len(nodes)} MatMul weights "
                f"quantized to MatMulNBits (block {recipe.block_size}, accuracy_level {recipe.accuracy_level})"
                + (f"; {others} other weighted nodes (Conv) stay FP32" if others else "")
            )
        if ranking is not None:
            details["sensitivity"] = _sensitivity_table(ranking, exclude)
            if ranking:
                top = ", ".join(f"{r['node']} ({r['op_type']}, {_score(r)})" for r in ranking[:3])
                notes.append(f"sensitivity (each node quantized alone), most sensitive first: {top}")
        return _Outcome(path, recipe, exclude, accuracy, details, notes)

    def _auto(self, bench: QuantBench, timer: Timer, host: HostProfile) -> _Outcome:
        """Try every candidate that applies and keeping float; ship the fastest within the budget."""
        cfg = self.config
        auto = cfg.auto
        mp_cfg = cfg.mixed_precision or MixedPrecisionConfig()
        result = auto_select(
            bench,
            cfg.model_dump(),
            timer,
            max_accuracy_drop=auto.max_accuracy_drop,
            exclude=cfg.exclude_nodes,
            fp32_search=(mp_cfg.proxy, mp_cfg.max_fp32_nodes) if auto.mixed_precision else None,
        )
        best, candidates = result.best, result.candidates
        float_row = next(c for c in candidates if c.name == KEEP_FLOAT)
        budget = f"{auto.max_accuracy_drop * 100:.2f} pt"
        quantized = [c for c in candidates if c.usable and c.recipe is not None]
        within = [c for c in quantized if c.accuracy_drop <= auto.max_accuracy_drop + ACCURACY_EPS]
        failed = [c for c in candidates if not c.usable]
        fastest = min(within, key=lambda c: c.p50_ms, default=None)
        if best.recipe is not None:
            why = f"fastest of {len(within)} quantized candidate(s) within the {budget} budget, faster than float"
        elif not quantized:
            why = "every quantized candidate failed"
        elif not within:
            why = f"no quantized candidate was within the {budget} budget"
        else:
            assert fastest is not None
            why = (
                f"no quantized candidate within the {budget} budget was faster than float "
                f"(fastest: {fastest.name}, p50 {fastest.p50_ms:.3f} ms)"
            )
        details: dict[str, Any] = {
            "candidates": [c.row() for c in candidates],
            "chosen": best.name,
            "budget_met": bool(within),
            "float": {
                "val_accuracy": bench.float_val_accuracy,
                "p50_ms": float_row.p50_ms,
                "size_bytes": float_row.size_bytes,
            },
        }
        if result.ranking is not None:
            details["sensitivity"] = _sensitivity_table(result.ranking, best.fp32_nodes)
        label = best.recipe.label() if best.recipe else "float model"
        ci = best.speedup_vs_float
        notes = [
            f"auto: {best.name} ({label}"
            + (f"; FP32: {', '.join(best.fp32_nodes)}" if best.fp32_nodes else "")
            + f"), {why}: validation accuracy {best.val_accuracy:.2%} "
            f"({-best.accuracy_drop * 100:+.2f} pt), p50 {best.p50_ms:.3f} ms vs {float_row.p50_ms:.3f} ms float"
            + (f" ({float_row.p50_ms / best.p50_ms:.2f}x [{ci[0]:.2f}-{ci[1]:.2f}])" if ci and best.recipe else "")
            + f"; {len(candidates)} candidates timed side by side"
        ]
        notes += [f"auto: candidate {c.name} failed and was skipped: {c.error}" for c in failed]
        if best.recipe is None and fastest is not None:  # INT8 was accurate enough but slower: which ops cost
            details["rejected_int8"] = {
                "candidate": fastest.name,
                **_op_time_diagnosis(bench, fastest.path, notes, host),
            }
        return _Outcome(best.path, best.recipe, list(best.fp32_nodes), best.val_accuracy, details, notes)

    # ------------------------------------------------------------ accuracy guard

    def fallback(self, attempt: int, previous: StageResult) -> Quantize | None:
        """Keep more nodes FP32: the ``attempt * fallback_nodes_per_attempt`` most sensitive ones.

        First, where ``reduce_range: auto`` chose 7-bit weights, 8-bit weights (ONNX Runtime's exact
        mode then). Uses the previous result's sensitivity table when it has one (and hands it on, so
        it is not recomputed); otherwise the new stage ranks the nodes itself (``exclude_most_sensitive``).
        ``auto`` is pinned to the candidate it chose. ``None`` (keep the float input) rather than a
        model with every quantizable node FP32, which is the float model plus Q/DQ.
        """
        cfg = self.config
        details = previous.details
        if details.get("deliverable") == "float":  # it already passes its float input on
            return None
        recipe = details.get("recipe") or {}
        if cfg.reduce_range == "auto" and recipe.get("reduce_range") and not details.get("fp32_nodes"):
            return Quantize(self.config.model_copy(update={"reduce_range": False}))
        table: list[dict[str, Any]] = details.get("sensitivity") or []
        quantizable = [n["node"] for n in details.get("quantizable_nodes", [])] or [r["node"] for r in table]
        fp32 = list(details.get("fp32_nodes", cfg.exclude_nodes))
        remaining = [n for n in quantizable if n not in fp32]
        if quantizable and not remaining:
            return None
        step = cfg.fallback_nodes_per_attempt
        settings = cfg.model_dump(exclude_unset=True)
        settings.update(details.get("recipe", {}))  # auto's winner, or the same method and settings
        settings.update(mixed_precision=None, exclude_most_sensitive=0)
        settings.pop("scheme", None)  # the recipe names both types
        if settings.get("calibration") != "percentile":
            settings.pop("percentile", None)
        if not table:
            if quantizable and step * attempt >= len(remaining):
                return None
            settings.update(exclude_nodes=fp32, exclude_most_sensitive=step * attempt)
            return Quantize(QuantizeConfig.model_validate(settings))
        ranked = [r["node"] for r in table if r["node"] not in fp32]
        wanted = [r["node"] for r in table[: step * attempt] if r["node"] not in fp32] or ranked[:step]
        if not wanted or (quantizable and set(quantizable) <= {*fp32, *wanted}):
            return None
        settings["exclude_nodes"] = [*fp32, *wanted]
        return Quantize(QuantizeConfig.model_validate(settings), ranking=table)


def _op_time_diagnosis(bench: QuantBench, int8_path: Path, notes: list[str], host: HostProfile) -> dict[str, Any]:
    """Profile a rejected INT8 model and its float input by op type (one validation sample, batch 1):
    which ops make INT8 lose. Appends the sentence to ``notes``; returns the per-op times."""
    sample = bench.val.head(1)
    int8_ops = op_times(int8_path, sample, host.graph_optimization, host.exact_int8)
    float_ops = op_times(bench.float_model, sample, host.graph_optimization, host.exact_int8)
    notes.append(why_int8_loses(int8_ops, float_ops))
    return {"int8_op_ms": int8_ops, "float_op_ms": float_ops}


def _score(row: dict[str, Any]) -> str:
    if "sqnr_db" in row:
        return f"SQNR {row['sqnr_db']:.1f} dB"
    if "accuracy_drop" in row:
        return f"-{row['accuracy_drop'] * 100:.2f} pt"
    return f"logits MSE {row['output_mse']:.3g}"


def _sensitivity_table(ranking: list[dict[str, Any]], fp32_nodes: list[str]) -> list[dict[str, Any]]:
    return [{**row, "fp32": row["node"] in fp32_nodes} for row in ranking]


def _mixed_precision_note(met: bool, fp32: list[str], drop: float, budget: float, trials: int) -> str:
    kept = f"{len(fp32)} node(s) FP32 ({', '.join(fp32)})" if fp32 else "no node FP32"
    if met:
        return f"mixed precision: {kept} meets the {budget * 100:.2f} pt budget (drop {drop * 100:.2f} pt)"
    return (
        f"mixed precision: budget of {budget * 100:.2f} pt NOT met after {trials} trials; kept the most accurate, "
        f"{kept}, drop {drop * 100:.2f} pt"
    )
