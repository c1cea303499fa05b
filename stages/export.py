"""``export``: PyTorch -> ONNX (dynamo exporter, dynamic batch axis), checked against PyTorch.

``exporter: optimum`` exports a Hugging Face model (``model: {hf: folder}``) with optimum-onnx's
task-aware exporter instead; ``fuse`` then runs ONNX Runtime's transformer optimizer (fused
Attention, SkipLayerNormalization, BiasGelu, ...; ``details.fusions`` counts them). The fused graph
ships only if it passes the same parity gate; otherwise the unfused one does, with a note
(``edgeslim.export.transformer``).

A QAT model is converted to its INT8 form first. The parity check runs the whole test split
through both and records the max/mean absolute difference and top-1 agreement; the stage
fails when agreement is below ``min_top1_agreement``.

``target: mobile`` also writes the phone bundle (``mobile/``: ORT-format model, operator
config for a reduced build, model info, app snippets) and checks the reloaded ``.ort``
model's accuracy against the ONNX model's. That target also accepts an ONNX input (e.g.
after ``quantize``), which it bundles as is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgeslim.config.schema import StrictModel
from edgeslim.engine.evaluate import output_parity
from edgeslim.engine.keys import versions_of
from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult, onnx_artifact
from edgeslim.engine.store import ONNX, ONNX_INT8, ONNX_MODEL_FILE, TORCH, TORCH_QAT
from edgeslim.errors import StageFailed, UserError, first_line
from edgeslim.export.mobile import build_bundle
from edgeslim.export.onnx_io import export_onnx, onnx_logits
from edgeslim.export.transformer import export_optimum, fuse_transformer, hf_model, ort_model_type
from edgeslim.quant.coverage import runtime_coverage
from edgeslim.quant.parity import Hop, quantized_hops
from edgeslim.train.loop import predict


class ExportConfig(StrictModel):
    target: Literal["onnx", "mobile"] = Field("onnx", description="mobile: also build the phone bundle")
    opset: int = Field(20, ge=17, le=23)
    exporter: Literal["torch", "optimum"] = Field(
        "torch", description="optimum: optimum-onnx's task-aware exporter, for Hugging Face models (model.hf)"
    )
    fuse: Literal["auto", "transformer", "none"] = Field(
        "auto",
        description="ONNX Runtime's transformer optimizer (fused attention, layer norms, GELU); auto: after "
        "exporter: optimum; transformer: after either exporter; the fused graph ships only if it passes parity",
    )
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="fail below this ONNX-vs-PyTorch agreement")
    mobile_platform: Literal["arm", "amd64"] = Field("arm", description="CPU the .ort optimizations target")
    max_ort_accuracy_drop: float = Field(
        0.002, ge=0, le=1, description="mobile: fail if the .ort model is less accurate than the ONNX by more"
    )


def output_kind(input_kind: str) -> str:
    """ONNX stays as it is; a QAT model exports to INT8, a float one to float ONNX."""
    if input_kind in (ONNX, ONNX_INT8):
        return input_kind
    return ONNX_INT8 if input_kind == TORCH_QAT else ONNX


class Export(Stage[ExportConfig]):
    name = "export"
    accepts = (TORCH, TORCH_QAT, ONNX, ONNX_INT8)

    def plan(self, request: PlanRequest) -> StagePlan:
        kind, cfg = request.input_kind, self.config
        if kind in (ONNX, ONNX_INT8) and cfg.target != "mobile":
            raise UserError(
                f"{request.where}: the input is already an ONNX model; use target: mobile to build a phone bundle "
                "from it"
            )
        asked = "exporter: optimum" if cfg.exporter == "optimum" else ""  # what needs a float PyTorch input
        asked = asked or ("fuse: transformer" if cfg.fuse == "transformer" else "")
        if asked and kind in (ONNX, ONNX_INT8):
            raise UserError(
                f"{request.where}: {asked} is for the export of a PyTorch model; the input is already ONNX ({kind})"
            )
        if asked and kind == TORCH_QAT:
            raise UserError(f"{request.where}: {asked} is for float models; a QAT model exports with exporter: torch")
        if cfg.exporter == "optimum" and request.config.model.hf is None:
            raise UserError(
                f"{request.where}: exporter: optimum exports Hugging Face models (model: {{hf: folder}}); "
                "this run's model is not one: use exporter: torch"
            )
        # optimum's exporter decides the graph: its versions join the key (transformers' already does)
        key_parts = {"optimum": versions_of("optimum", "optimum-onnx")} if cfg.exporter == "optimum" else {}
        return StagePlan(output_kind=output_kind(kind), key_parts=key_parts)

    def run(self, ctx: StageContext, cfg: ExportConfig) -> StageResult:
        if ctx.input.kind in (ONNX, ONNX_INT8):
            path = ctx.out_dir / ONNX_MODEL_FILE
            shutil.copyfile(ctx.input.file("model"), path)
            artifact = onnx_artifact(ctx, output_kind(ctx.input.kind), {"quantized": ctx.input.kind == ONNX_INT8})
            result = StageResult(artifact, notes=[f"ONNX input bundled as is ({ctx.input.kind})"])
            return self._mobile(ctx, path, result)
        model = ctx.models.load_deployable(ctx.input)
        quantized = ctx.input.kind == TORCH_QAT
        if cfg.exporter == "optimum":
            path = export_optimum(model, ctx.example(), ctx.out_dir / ONNX_MODEL_FILE, cfg.opset, ctx.where)
        else:
            path = export_onnx(model, ctx.example(), ctx.out_dir / ONNX_MODEL_FILE, opset=cfg.opset)
        x = ctx.data.test
        host = ctx.config.host
        reference = predict(model, x).numpy()
        exported = onnx_logits(path, x, batch_size=ctx.config.measure.eval_batch_size)
        parity = output_parity(reference, exported)
        agreement = parity["top1_agreement"]
        hops = []
        if quantized:  # where does an INT8 export part from PyTorch: the export, or ONNX Runtime's fusion?
            hops = quantized_hops(
                None, path, x, host.graph_optimization, host.exact_int8, cfg.min_top1_agreement, reference, "PyTorch"
            )
        if agreement < cfg.min_top1_agreement:
            where = next((h for h in hops if not h.passed), None)
            blame = (
                f"; the {where.name} hop fails (first diverging node: {where.first_divergent_node}), "
                "so ONNX Runtime's fusion of the Q/DQ graph changes the results, not the export"
                if where is not None
                else (f"; {hops[0].line()}" if hops else "")
            )
            raise StageFailed(
                f"{ctx.where}: ONNX and PyTorch agree on top-1 for only {agreement:.2%} of {len(x)} test samples "
                f"(min_top1_agreement: {cfg.min_top1_agreement}); max abs diff {parity['max_abs_diff']:.3g}{blame}"
            )
        details: dict[str, Any] = {"parity": parity, "opset": cfg.opset, "exporter": cfg.exporter}
        if not hops:  # a float export is one hop: PyTorch -> ONNX FP32
            hops = [Hop("PyTorch -> ONNX FP32", parity, cfg.min_top1_agreement)]
        details["parity_ledger"] = [{**h.row(), "split": "test"} for h in hops]
        label = "FP32"
        notes = []
        if cfg.fuse == "transformer" or (cfg.fuse == "auto" and cfg.exporter == "optimum"):
            notes.append(self._fuse(ctx, cfg, path, ort_model_type(hf_model(model)), reference, exported, details))
        if quantized:  # INT8 only if ONNX Runtime really runs its convs/linears in integer kernels
            host = ctx.config.host
            coverage = runtime_coverage(path, host.graph_optimization, host.exact_int8)
            details["int8_coverage"] = coverage.to_dict()
            label = "INT8 (from QAT)" if coverage.is_int8 else "QAT"
            notes.append(coverage.summary() + " (the graph ONNX Runtime executes on the host profile)")
            notes += [f"parity: {h.line()}" for h in hops]
            if not coverage.is_int8:
                notes.append(
                    "warning: most convolutions/linears of this QAT model still run in float in ONNX Runtime: "
                    "it is not an INT8 model in practice"
                )
        extra = {"quantized": quantized, "opset": cfg.opset, "exporter": cfg.exporter, "fused": details.get("fused")}
        artifact = onnx_artifact(ctx, output_kind(ctx.input.kind), extra)
        exporter = " (optimum exporter)" if cfg.exporter == "optimum" else ""
        notes.insert(
            0,
            f"{label} ONNX{exporter}, opset {cfg.opset}: top-1 agreement with PyTorch {agreement:.2%}, "
            f"max abs diff {parity['max_abs_diff']:.2e}",
        )
        result = StageResult(artifact, details=details, notes=notes)
        return self._mobile(ctx, path, result)

    def _fuse(
        self,
        ctx: StageContext,
        cfg: ExportConfig,
        path: Path,
        model_type: str,
        reference: np.ndarray,
        unfused: np.ndarray,
        details: dict[str, Any],
    ) -> str:
        """Replace ``path`` by ONNX Runtime's transformer-optimized graph if it passes the parity gate
        against PyTorch; record the fused operator counts and the hop; return the report line."""
        fused_path = ctx.out_dir / f".fused.{path.name}"
        details["fused"] = False
        try:
            fusion = fuse_transformer(path, fused_path, model_type)
        except Exception as exc:  # any optimizer failure: the unfused graph, which passed parity, ships
            fused_path.unlink(missing_ok=True)
            details["fusions"] = {}
            return (
                f"kept the unfused graph: ONNX Runtime's transformer optimizer failed "
                f"({type(exc).__name__}: {first_line(exc)})"
            )
        details["fusions"] = fusion.counts
        if not fusion.counts:
            fused_path.unlink(missing_ok=True)
            return f"ONNX Runtime's transformer optimizer ({model_type}) fused nothing: the unfused graph ships"
        batch = ctx.config.measure.eval_batch_size
        fused = onnx_logits(fused_path, ctx.data.test, batch_size=batch)
        parity = output_parity(reference, fused)
        hop = Hop(
            "ONNX FP32 -> fused (ORT transformer optimizer)", output_parity(unfused, fused), cfg.min_top1_agreement
        )
        details["parity_ledger"].append({**hop.row(), "split": "test"})
        if parity["top1_agreement"] < cfg.min_top1_agreement:
            fused_path.unlink(missing_ok=True)
            return (
                f"kept the unfused graph: fused by ONNX Runtime's transformer optimizer ({fusion.line()}), it agrees "
                f"with PyTorch on top-1 for only {parity['top1_agreement']:.2%} (min_top1_agreement: "
                f"{cfg.min_top1_agreement})"
            )
        os.replace(fused_path, path)
        details.update(fused=True, parity=parity)
        untyped = (
            "; its tensor types could not be inferred, so ONNX Runtime's quantizers may fail on it (fuse: none)"
            if not fusion.typed
            else ""
        )
        return (
            f"fused by ONNX Runtime's transformer optimizer ({model_type}): {fusion.line()}; top-1 agreement with "
            f"PyTorch {parity['top1_agreement']:.2%}, max abs diff {parity['max_abs_diff']:.2e}{untyped}"
        )

    def _mobile(self, ctx: StageContext, path: Path, result: StageResult) -> StageResult:
        """Build and check the phone bundle when ``target: mobile`` (the ONNX model stays the artifact)."""
        cfg = self.config
        if cfg.target != "mobile":
            return result
        batch = ctx.config.measure.eval_batch_size
        # Like with like: an .ort file keeps the kernels ONNX Runtime chose when converting it, so the
        # ONNX model is judged here with the default kernels too (they differ only on x86 without VNNI).
        x, y = ctx.data.test, ctx.data.test.labels
        onnx_out = onnx_logits(path, x, batch_size=batch, exact_int8=False)
        onnx_acc = float((onnx_out.argmax(1) == y.numpy()).mean())
        ort_out: list[np.ndarray] = []

        def ort_accuracy(ort_file: Path) -> float:  # the reloaded .ort model, kept for the parity ledger
            ort_out.append(onnx_logits(ort_file, x, batch_size=batch, exact_int8=False))
            return float((ort_out[-1].argmax(1) == y.numpy()).mean())

        bundle = build_bundle(
            path,
            ctx.out_dir,
            preprocessing=ctx.data.preprocessing,
            labels=ctx.data.labels,
            platform=cfg.mobile_platform,
            accuracy_of=ort_accuracy,
            samples=x.head(16),  # real test inputs: the example shapes and the output's kind
            tokenizer=(
                {"folder": tokens.tokenizer, "pad_id": tokens.pad_id, "max_length": tokens.max_length}
                if (tokens := ctx.data.tokens)
                else None
            ),
        )
        drop = onnx_acc - bundle["ort_accuracy"]
        if drop > cfg.max_ort_accuracy_drop:
            raise StageFailed(
                f"{ctx.where}: the ORT-format model scores {bundle['ort_accuracy']:.2%} vs {onnx_acc:.2%} for the "
                f"ONNX model (max_ort_accuracy_drop: {cfg.max_ort_accuracy_drop})"
            )
        hop = Hop("ONNX -> .ort (phone bundle)", output_parity(onnx_out, ort_out[-1]))
        result.details.setdefault("parity_ledger", []).append({**hop.row(), "split": "test"})
        result.artifact.meta["files"]["mobile_bundle"] = bundle["directory"]
        result.artifact.save()
        result.details["mobile"] = {**bundle, "onnx_accuracy": onnx_acc}
        result.notes.append(
            f"phone bundle mobile/: model.ort {bundle['ort_size_bytes'] / 1024:.1f} KB for {cfg.mobile_platform}, "
            f"{len(bundle['operators'])} operator sets; reloaded .ort accuracy {bundle['ort_accuracy']:.2%} "
            f"(ONNX {onnx_acc:.2%}, both with ONNX Runtime's default INT8 kernels, which an .ort file keeps)"
        )
        return result
