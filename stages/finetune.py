"""``finetune``: recover accuracy after pruning, and optionally learn quantization (QAT).

Every option of the training engine is available (optimizers, schedules, layer-wise and
importance-scaled learning rates, freezing, augmentation, losses). On top: distillation from
one or an ensemble of teachers (earlier stages or weight files of the original architecture),
an optional intermediate-feature (hint) loss, layer-by-layer hidden-state and attention-map
distillation for transformers (``distill.layers``), BatchNorm re-estimation before training, and
``qat: true`` for PT2E quantization-aware training so the result exports as real INT8.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from edgeslim.config.schema import StrictModel
from edgeslim.data.batches import call
from edgeslim.devices import edgeslim_bench
from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult
from edgeslim.engine.store import TORCH, TORCH_QAT
from edgeslim.errors import UserError
from edgeslim.models.blocks import transformer_blocks
from edgeslim.models.loader import count_params_and_macs, output_layer_name, replace_head, save_torch_artifact
from edgeslim.models.zoo import load_state_dict_file, load_weights
from edgeslim.prune.layers import kept_blocks
from edgeslim.quant import qat
from edgeslim.train.importance import parameter_importance
from edgeslim.train.layer_distill import LayerDistiller, attention_outputs, uniform_mapping
from edgeslim.train.loop import TrainLoopConfig, evaluate, fit, recalibrate_batchnorm, set_dropout
from edgeslim.train.losses import FeatureTap, compose_loss, make_adapter
from edgeslim.train.optim import ImportanceLRConfig, OptimizerConfig, importance_scales

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


class HintConfig(StrictModel):
    layer: str = Field(..., description="student module whose output is matched, e.g. features.6")
    teacher_layer: str | None = Field(None, description="teacher module (default: the same name)")
    weight: float = Field(1.0, gt=0)


class HeadConfig(StrictModel):
    """A new output layer, e.g. to adapt a model to a task with other classes."""

    num_classes: int | None = Field(None, ge=2, description="default: the data's number of classes")
    hidden: list[int] = Field(default_factory=list, description="hidden layer sizes before the output layer")
    dropout: float = Field(0.0, ge=0, lt=1)
    layer: str | None = Field(None, description="module to replace (default: the layer producing the logits)")


class LayerDistillConfig(StrictModel):
    """Transformer blocks matched one by one (TinyBERT/MiniLM-style), beside the logits."""

    hidden: float = Field(1.0, ge=0, description="weight of the hidden-state MSE (real tokens)")
    attention: float = Field(1.0, ge=0, description="weight of KL between head-averaged attention maps")
    mapping: dict[int, int] | None = Field(
        None, description="student block -> teacher block (0-based); default: uniform, the last to the last"
    )

    @model_validator(mode="after")
    def _some_weight(self) -> LayerDistillConfig:
        if self.hidden == 0 and self.attention == 0:
            raise ValueError("hidden and attention are both 0: set a weight or drop layers")
        return self


class DistillConfig(StrictModel):
    teacher: str | list[str] = Field(
        "baseline", description="earlier stage(s) by name/index, or weight files of the original architecture"
    )
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    hint: HintConfig | None = None
    layers: LayerDistillConfig | None = Field(
        None, description="also match hidden states / attention maps block by block (transformers)"
    )

    @property
    def teachers(self) -> list[str]:
        return [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)


class FinetuneConfig(TrainLoopConfig):
    epochs: int = Field(4, ge=1, le=1000)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=1e-3))
    head: HeadConfig | None = None
    importance_lr: ImportanceLRConfig | None = None
    bn_recalibration_batches: int = Field(0, ge=0, description="re-estimate BatchNorm statistics before training")
    distill: DistillConfig | None = None
    qat: bool = Field(False, description="quantization-aware training (PT2E, torchao)")
    qat_weight_bits: Literal[7, 8, "auto"] = Field(
        "auto",
        description="QAT weight range; auto: 7 on x86 CPUs without VNNI, where ONNX Runtime's fast U8S8 kernels "
        "are exact only with 7-bit weights, else 8",
    )

    @model_validator(mode="after")
    def _compatible(self) -> FinetuneConfig:
        for key in ("hint", "layers"):
            if self.qat and self.distill is not None and getattr(self.distill, key) is not None:
                raise ValueError(f"distill.{key} cannot be combined with qat: a QAT graph has no named layers to tap")
        if self.distill is not None and not self.distill.teachers:
            raise ValueError("distill.teacher: name at least one teacher")
        return self


def _is_weight_file(ref: str) -> bool:
    return ref.endswith(WEIGHT_SUFFIXES)


class Finetune(Stage[FinetuneConfig]):
    name = "finetune"
    accepts = (TORCH,)
    distributed = True

    def plan(self, request: PlanRequest) -> StagePlan:
        """Teachers must be earlier stages or loadable weight files (pickles are refused here, up front);
        teacher weight files join the cache key."""
        distill, where = self.config.distill, request.where
        files = []
        for ref in distill.teachers if distill else []:
            if _is_weight_file(ref):
                load_state_dict_file(Path(ref), f"{where}.distill.teacher")
                files.append(Path(ref))
                continue
            try:
                earlier = request.config.stage_index(ref) < request.index
            except UserError as exc:
                raise UserError(f"{where}.distill.teacher: {exc}") from None
            if not earlier:
                raise UserError(f"{where}.distill.teacher: stage '{ref}' must come before this stage")
        auto_bits = self.config.qat and self.config.qat_weight_bits == "auto"  # depends on the CPU
        return StagePlan(
            output_kind=TORCH_QAT if self.config.qat else TORCH,
            input_files=tuple(files),
            changes_classes=self.config.head is not None,
            key_parts={"qat_weight_bits": self._weight_bits()} if auto_bits else {},
        )

    def _weight_bits(self) -> int:
        bits = self.config.qat_weight_bits
        return (7 if edgeslim_bench.u8s8_saturates() else 8) if bits == "auto" else bits

    def run(self, ctx: StageContext, cfg: FinetuneConfig) -> StageResult:
        model = ctx.models.load(ctx.input)
        start_acc, _ = evaluate(model, ctx.data.val)
        notes: list[str] = []
        details: dict = {"val_accuracy_before": start_acc}
        edits = ctx.models.history_of(ctx.input)
        if cfg.head is not None:
            edits = [*edits, self._new_head(model, cfg.head, ctx, notes)]
        params, macs = count_params_and_macs(model, ctx.example())
        if cfg.bn_recalibration_batches:
            recalibrate_batchnorm(model, ctx.data.train, cfg.bn_recalibration_batches, 64)
            details["val_accuracy_bn_recalibrated"] = evaluate(model, ctx.data.val)[0]
        if cfg.dropout is not None:
            set_dropout(model, cfg.dropout)  # before QAT: the exported graph freezes dropout's p

        lr_scales = None
        if cfg.importance_lr is not None:
            lr_scales = self._importance_scales(model, cfg.importance_lr, ctx, notes)
            details["lr_scales"] = lr_scales
        teachers, hint, extra = self._distillation(model, cfg.distill, ctx, notes) if cfg.distill else ([], None, {})
        if cfg.qat:
            bits = self._weight_bits()
            model = qat.prepare_qat(model, ctx.example(4), bits)
            notes.append(
                "quantization-aware training (PT2E, Q/DQ placed where ONNX Runtime fuses them: u8 activations, "
                f"per-channel symmetric {bits}-bit weights"
                + (", for its exact fast kernels on x86 without VNNI)" if bits == 7 else ")")
            )

        layers = cfg.distill.layers if cfg.distill else None
        distiller = self._layer_distiller(model, teachers[0], layers, ctx, notes) if layers else None
        if distiller is not None:
            extra |= {f"layer_adapter.{n}": p for n, p in distiller.adapters.named_parameters()}
        loss_fn = compose_loss(
            cfg.loss,
            teachers=teachers,
            hint=hint,
            layers=distiller,
            temperature=cfg.distill.temperature if cfg.distill else 1.0,
            alpha=cfg.distill.alpha if cfg.distill else 0.0,
        )
        with attention_outputs(model, *teachers) if layers and layers.attention > 0 else nullcontext():
            result = fit(
                model,
                ctx.data.train,
                ctx.data.val,
                cfg,
                loss_fn=loss_fn,
                lr_scales=lr_scales,
                extra_params=extra,
                seed=ctx.seed,
                label="finetune" + (" (QAT)" if cfg.qat else ""),
                where=ctx.where,
                tokenizer=ctx.data.tokens.tokenizer if ctx.data.tokens else None,
            )
        if hint is not None:
            hint[0].remove()
            hint[1].remove()
        if distiller is not None:
            distiller.remove()
        if cfg.qat:
            qat.freeze_observers(model)
        test_acc, _ = evaluate(model, ctx.data.test)
        artifact = save_torch_artifact(
            ctx.out_dir,
            model,
            kind=TORCH_QAT if cfg.qat else TORCH,
            pruning_history=edits,
            params=params,
            macs=macs,
            extra={"qat_weight_bits": self._weight_bits()} if cfg.qat else None,
        )
        notes.append(
            f"val accuracy {start_acc:.4f} → {result.best_val_accuracy:.4f} (best epoch "
            f"{result.best_epoch}{', stopped early' if result.stopped_early else ''})"
        )
        details.update(
            best_val_accuracy=result.best_val_accuracy,
            torch_test_accuracy=test_acc,
            best_epoch=result.best_epoch,
            stopped_early=result.stopped_early,
            epochs=result.history,
        )
        return StageResult(artifact, details=details, notes=notes)

    def _new_head(self, model: nn.Module, head: HeadConfig, ctx: StageContext, notes: list[str]) -> dict[str, Any]:
        """Replace the output layer (seeded init); returns the edit, replayed when the model is loaded."""
        spec = {
            "layer": head.layer or output_layer_name(model, ctx.example()),
            "num_classes": head.num_classes or ctx.data.num_classes,
            "hidden": head.hidden,
            "dropout": head.dropout,
        }
        torch.manual_seed(ctx.seed)
        replace_head(model, spec)
        notes.append(f"new head on {spec['layer']}: hidden {spec['hidden'] or 'none'} → {spec['num_classes']} classes")
        return {"head": spec}

    def _importance_scales(
        self, model: nn.Module, cfg: ImportanceLRConfig, ctx: StageContext, notes: list[str]
    ) -> dict[str, float]:
        """Per-parameter learning-rate factors from importance scores on calibration samples."""
        x, y = ctx.calibration_samples(cfg.calibration_samples)
        scores = parameter_importance(model, cfg.criterion, x, y, cfg.hutchinson_samples, seed=ctx.seed)
        model.zero_grad(set_to_none=True)
        scales = importance_scales(scores, cfg, [n for n, _ in model.named_parameters()])
        ranked = sorted(scales.items(), key=lambda kv: kv[1])
        notes.append(
            f"importance-scaled lr ({cfg.criterion}, {cfg.direction}, {cfg.map}): x{ranked[0][1]:.2f} "
            f"({ranked[0][0]}) … x{ranked[-1][1]:.2f} ({ranked[-1][0]})"
        )
        return scales

    def _distillation(
        self, model: nn.Module, cfg: DistillConfig, ctx: StageContext, notes: list[str]
    ) -> tuple[list[nn.Module], Any, dict[str, nn.Parameter]]:
        """Teachers (checked to predict the data's classes), and the hint loss's feature taps and adapter."""
        teachers = [self._teacher(ref, ctx) for ref in cfg.teachers]
        with torch.no_grad():
            widths = {call(t, ctx.example()).shape[-1] for t in teachers}
        if widths != {ctx.data.num_classes}:
            raise UserError(
                f"{ctx.where}.distill.teacher: teachers predict {sorted(widths)} classes, the data has "
                f"{ctx.data.num_classes}; distillation needs the same classes"
            )
        notes.append(f"distilled from {' + '.join(cfg.teachers)} (T={cfg.temperature}, alpha={cfg.alpha})")
        if cfg.hint is None:
            return teachers, None, {}
        hint, adapter = self._hint(model, teachers[0], cfg.hint, ctx)
        notes.append(f"hint loss on {cfg.hint.layer} (weight {cfg.hint.weight})")
        return teachers, hint, {f"hint_adapter.{n}": p for n, p in adapter.named_parameters()}

    def _layer_distiller(
        self, model: nn.Module, teacher: nn.Module, cfg: LayerDistillConfig, ctx: StageContext, notes: list[str]
    ) -> LayerDistiller:
        """Hooks on both models' transformer blocks, the block mapping checked, hidden adapters sized."""
        where = f"{ctx.where}.distill.layers"
        n_student, n_teacher = len(transformer_blocks(model)), len(transformer_blocks(teacher))
        if not n_student or not n_teacher:
            raise UserError(
                f"{where}: no transformer blocks found in the {'model' if not n_student else 'teacher'} "
                "(modules named like encoder.layer.0, layers.0, blocks.0 or h.0)"
            )
        kept = kept_blocks(ctx.models.history_of(ctx.input))  # blocks a prune dropped: map to their originals
        if cfg.mapping:
            mapping = cfg.mapping
        elif kept is not None and len(kept) == n_student and max(kept) < n_teacher:
            mapping = dict(enumerate(kept))
        else:
            mapping = uniform_mapping(n_student, n_teacher)
        bad = {s: t for s, t in mapping.items() if not (0 <= s < n_student and 0 <= t < n_teacher)}
        if bad:
            raise UserError(
                f"{where}.mapping: {bad} is out of range (the model has {n_student} blocks, the teacher {n_teacher})"
            )
        distiller = LayerDistiller(model, teacher, cfg.hidden, cfg.attention, mapping)
        was_training = model.training
        model.eval()
        try:
            with attention_outputs(model, teacher) if cfg.attention > 0 else nullcontext():
                distiller.fit_adapters(ctx.example(), call)
        except ValueError as exc:
            distiller.remove()
            raise UserError(f"{where}: {exc}") from None
        model.train(was_training)
        adapters = f", learned adapters on {len(distiller.adapters)} (pruned width)" if distiller.adapters else ""
        notes.append(
            f"layer distillation: hidden x{cfg.hidden}, attention x{cfg.attention} over blocks "
            + ", ".join(f"{s}←{t}" for s, t in sorted(mapping.items()))
            + adapters
        )
        return distiller

    def _teacher(self, ref: str, ctx: StageContext) -> nn.Module:
        where = f"{ctx.where}.distill.teacher"
        if _is_weight_file(ref):
            teacher = ctx.models.build()
            load_weights(teacher, load_state_dict_file(Path(ref), where), where)
        else:
            artifact = ctx.artifact_of(ref)
            if artifact.kind != TORCH:
                raise UserError(f"{where}: stage '{ref}' is not a float PyTorch model ({artifact.kind})")
            teacher = ctx.models.load(artifact)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _hint(self, student: nn.Module, teacher: nn.Module, cfg: HintConfig, ctx: StageContext):
        where = f"{ctx.where}.distill.hint"
        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        t_name = cfg.teacher_layer or cfg.layer
        if cfg.layer not in s_modules:
            raise UserError(f"{where}.layer: no module '{cfg.layer}' in the model")
        if t_name not in t_modules:
            raise UserError(f"{where}.teacher_layer: no module '{t_name}' in the teacher")
        s_tap, t_tap = FeatureTap(s_modules[cfg.layer]), FeatureTap(t_modules[t_name])
        with torch.no_grad():
            student.eval()
            call(student, ctx.example())
            call(teacher, ctx.example())
        s_out, t_out = s_tap.value, t_tap.value
        if s_out is None or t_out is None or s_out.shape[2:] != t_out.shape[2:]:
            raise UserError(f"{where}: layers '{cfg.layer}' and '{t_name}' give outputs of different spatial shape")
        adapter = make_adapter(s_out.shape[1], t_out.shape[1], spatial=s_out.dim() == 4)
        return (s_tap, t_tap, adapter, cfg.weight), adapter
