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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from edgeslim.config.schema import StrictModel
from edgeslim.engine.measure import host_latency, latency_inputs
from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult, onnx_artifact
from edgeslim.engine.store import ONNX, ONNX_INT8, ONNX_MODEL_FILE, TORCH
from edgeslim.errors import UserError
from edgeslim.export.onnx_io import check_onnx_file, load_onnx
from edgeslim.quant.methods import Recipe, recipe_from
from edgeslim.quant.ort import (
    ACCURACY_EPS,
    QuantBench,
    auto_select,
    ort_optimize,
    quantized_weight_count,
    rank_sensitivity,
    search_mixed_precision,
)

SCHEMES = {"u8s8": ("uint8", "int8"), "s8s8": ("int8", "int8")}


class MixedPrecisionConfig(StrictModel):
    """Keep the most quantization-sensitive nodes FP32 until the validation accuracy budget is met."""

    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="vs the float input on the validation split, as a fraction (0.01 = 1 point)"
    )
    proxy: Literal["accuracy", "output_error"] = Field(
        "accuracy",
        description="rank nodes by validation accuracy drop, or by logits MSE vs float on calibration data (cheaper)",
    )
    max_fp32_nodes: int = Field(8, ge=0, le=10_000, description="at most this many nodes kept FP32 by the search")


class AutoConfig(StrictModel):
    """``method: auto``: the fastest candidate within the accuracy budget wins."""

    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="vs the float input on the validation split")
    warmup: int = Field(10, ge=0, description="latency runs per candidate (host profile, fresh process)")
    runs: int = Field(100, ge=5)
    max_seconds: float = Field(3.0, gt=0)
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
    method: Literal["static", "dynamic", "int4", "auto"] = "static"
    # static (and dynamic: per_channel, weight_type, reduce_range)
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    scheme: Literal["u8s8", "s8s8"] | None = Field(None, description="shorthand for activation_type + weight_type")
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = Field(False, description="7-bit weights, for x86 CPUs without VNNI")
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
    fallback_nodes_per_attempt: int = Field(2, ge=1, description="accuracy guard fallback: more FP32 nodes per try")

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        """``preprocess: true|false`` (old key) -> ``optimize``; ``scheme`` -> activation/weight types."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
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
        if self.method == "dynamic" and self.activation_type != "uint8":
            raise ValueError("activation_type: dynamic quantization always uses uint8 activations (static only)")
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
    recipe: Recipe
    fp32_nodes: list[str]
    val_accuracy: float
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Quantize(Stage[QuantizeConfig]):
    name = "quantize"
    accepts = (ONNX, ONNX_INT8, TORCH)

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
        key_parts = {}
        if self.config.method == "auto":  # auto's choice depends on where latency is measured
            host = request.config.host
            key_parts["host"] = {
                "threads": host.threads[0],
                "batch_size": host.batch_sizes[0],
                "opt": host.graph_optimization,
            }
        return StagePlan(output_kind=ONNX_INT8, key_parts=key_parts)

    def _neural_compressor(self, ctx: StageContext) -> StageResult:
        """Accuracy-aware INT8 of the PyTorch model with Neural Compressor, exported as QDQ ONNX."""
        from edgeslim.quant import inc as inc_backend

        cfg = self.config
        reason = inc_backend.inc_available()
        if reason is not None:
            raise UserError(f"{ctx.where}.backend: neural-compressor is not usable here: {reason}")
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
        source = ctx.input.file("model")
        check_onnx_file(source)
        samples = ctx.calibration_samples(cfg.calibration_samples)[0].numpy()
        out = ctx.out_dir / ONNX_MODEL_FILE
        with tempfile.TemporaryDirectory(prefix=".quantize-", dir=ctx.out_dir) as tmp:
            bench = QuantBench(
                source,
                Path(tmp),
                samples,
                ctx.data.val.tensors,
                preprocess_first=cfg.optimize in ("before", "both"),
                eval_batch_size=ctx.config.measure.eval_batch_size,
            )
            self._check_exclude_nodes(ctx, bench)
            outcome = self._auto(ctx, bench) if cfg.method == "auto" else self._fixed(ctx, bench, cfg.recipe())
            quantizable = bench.nodes(outcome.recipe.method)
            float_val_accuracy = bench.float_val_accuracy
            if cfg.optimize in ("after", "both"):
                optimized = ort_optimize(outcome.path, bench.work_dir / "optimized.onnx")
                outcome.val_accuracy, _ = bench.evaluate(optimized)  # judge the file that ships
                outcome.notes.append(
                    "saved ONNX Runtime's optimized graph (extended level: quantized ops fused into contrib ops "
                    "such as QLinearConv/QGemm, so the file needs ONNX Runtime)"
                )
                os.replace(optimized, out)
            else:
                os.replace(outcome.path, out)
        artifact = onnx_artifact(ctx, ONNX_INT8, {"quantized": True, "method": outcome.recipe.method})
        drop = float_val_accuracy - outcome.val_accuracy
        quantized = quantized_weight_count(load_onnx(out))
        details = {
            "method": cfg.method,
            "recipe": outcome.recipe.settings(),
            "settings": cfg.model_dump(mode="json"),
            "calibration_samples": len(samples),
            "quantizable_nodes": [{"node": n.name, "op_type": n.op_type} for n in quantizable],
            "fp32_nodes": outcome.fp32_nodes,
            "quantized_weights": quantized,
            "float_val_accuracy": float_val_accuracy,
            "val_accuracy": outcome.val_accuracy,
            "val_accuracy_drop": drop,
            **outcome.details,
        }
        notes = [
            *outcome.notes,
            f"validation accuracy {outcome.val_accuracy:.2%} vs {float_val_accuracy:.2%} for the float input "
            f"({-drop * 100:+.2f} pt); {quantized} weight tensors quantized, "
            f"{len(outcome.fp32_nodes)} node(s) kept FP32",
        ]
        return StageResult(artifact, details=details, notes=notes)

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
            + (f", calibrated on {len(bench.calibration)} training images" if recipe.method == "static" else "")
        ]
        if recipe.method == "int4" and not nodes:
            raise UserError(
                f"{ctx.where}.method: int4 quantizes Linear (MatMul/Gemm) weights and this model has none; "
                "use method: static"
            )
        convs = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose")]
        if recipe.method == "dynamic" and convs:
            notes.append(
                f"warning: dynamic quantization turns the model's {len(convs)} Conv layers into ConvInteger, which "
                "ran 5-20x slower than FP32 in ONNX Runtime on x86 here; prefer method: static (or auto) for "
                "convolutional models"
            )
        exclude = list(cfg.exclude_nodes)
        details: dict[str, Any] = {}
        ranking = self._ranking
        if ranking is None and (cfg.mixed_precision is not None or cfg.exclude_most_sensitive):
            proxy = cfg.mixed_precision.proxy if cfg.mixed_precision is not None else "output_error"
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

    def _auto(self, ctx: StageContext, bench: QuantBench) -> _Outcome:
        """Measure every candidate that applies; keep the fastest within the budget (else the most accurate)."""
        cfg = self.config
        auto, host = cfg.auto, ctx.config.host
        inputs = latency_inputs(ctx.data, bench.work_dir)

        def p50(path: Path) -> float:
            latency = host_latency(
                path, host, warmup=auto.warmup, runs=auto.runs, max_seconds=auto.max_seconds, inputs=inputs
            )
            return float(latency["latency_ms"]["p50"])

        mp_cfg = cfg.mixed_precision or MixedPrecisionConfig()
        result = auto_select(
            bench,
            cfg.model_dump(),
            p50,
            max_accuracy_drop=auto.max_accuracy_drop,
            exclude=cfg.exclude_nodes,
            fp32_search=(mp_cfg.proxy, mp_cfg.max_fp32_nodes) if auto.mixed_precision else None,
        )
        best, candidates = result.best, result.candidates
        float_p50 = p50(bench.float_model)
        budget = f"{auto.max_accuracy_drop * 100:.2f} pt"
        n_within = sum(c.accuracy_drop <= auto.max_accuracy_drop + ACCURACY_EPS for c in candidates)
        why = (
            f"fastest of {n_within} candidates within the {budget} budget"
            if result.budget_met
            else f"no candidate was within the {budget} budget: kept the most accurate"
        )
        details: dict[str, Any] = {
            "candidates": [c.row() for c in candidates],
            "chosen": best.name,
            "budget_met": result.budget_met,
            "float": {
                "val_accuracy": bench.float_val_accuracy,
                "p50_ms": float_p50,
                "size_bytes": bench.float_model.stat().st_size,
            },
        }
        if result.ranking is not None:
            details["sensitivity"] = _sensitivity_table(result.ranking, best.fp32_nodes)
        notes = [
            f"auto: {best.name} ({best.recipe.label()}"
            + (f"; FP32: {', '.join(best.fp32_nodes)}" if best.fp32_nodes else "")
            + f"), {why}: validation accuracy {best.val_accuracy:.2%} "
            f"({-best.accuracy_drop * 100:+.2f} pt), p50 {best.p50_ms:.3f} ms vs {float_p50:.3f} ms float "
            f"({host.threads[0]} thread(s), batch {host.batch_sizes[0]}), {len(candidates)} candidates measured"
        ]
        return _Outcome(best.path, best.recipe, list(best.fp32_nodes), best.val_accuracy, details, notes)

    # ------------------------------------------------------------ accuracy guard

    def fallback(self, attempt: int, previous: StageResult) -> Quantize | None:
        """Keep more nodes FP32: the ``attempt * fallback_nodes_per_attempt`` most sensitive ones.

        Uses the previous result's sensitivity table when it has one (and hands it on, so it is
        not recomputed); otherwise the new stage ranks the nodes itself (``exclude_most_sensitive``).
        ``auto`` is pinned to the candidate it chose. ``None`` once every quantizable node is FP32.
        """
        cfg = self.config
        details = previous.details
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
            settings.update(exclude_nodes=fp32, exclude_most_sensitive=step * attempt)
            return Quantize(QuantizeConfig.model_validate(settings))
        ranked = [r["node"] for r in table if r["node"] not in fp32]
        wanted = [r["node"] for r in table[: step * attempt] if r["node"] not in fp32] or ranked[:step]
        if not wanted:
            return None
        settings["exclude_nodes"] = [*fp32, *wanted]
        return Quantize(QuantizeConfig.model_validate(settings), ranking=table)


def _score(row: dict[str, Any]) -> str:
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
