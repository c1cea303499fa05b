"""Transformer exports: Hugging Face models through optimum-onnx's exporter, and ONNX Runtime's
transformer optimizer (fused Attention, SkipLayerNormalization, BiasGelu, ...).

:func:`export_optimum` exports the ``transformers`` model inside the pipeline's wrappers with the
task-aware exporter of optimum-onnx (``optimum.exporters.onnx``; the TorchScript exporter underneath),
for the sequence-classification task, with exactly the data's named inputs (optimum would add
``token_type_ids`` for BERT) and the input spec's dynamic axis names (``batch``, ``sequence``).
A pruned model is exported as it is: its modules and head counts, not its config's numbers.

:func:`fuse_transformer` runs ``onnxruntime.transformers.optimizer.optimize_model`` with the head
count and hidden size detected from the graph (``num_heads=0, hidden_size=0``: a pruned model has
fewer than its config says) and returns the fused operator counts. The caller decides, by parity,
whether the fused graph ships.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
from torch import nn

from edgeslim.data.batches import Inputs, dynamic_axes
from edgeslim.errors import StageFailed, UserError, first_line
from edgeslim.export.onnx_io import _quiet_exporter, check_onnx_file, load_onnx

# optimum's name of the task models.hf builds (AutoModelForSequenceClassification)
OPTIMUM_TASK = "text-classification"
# ONNX Runtime's optimizer model types (onnxruntime.transformers.optimizer.MODEL_TYPES) for Hugging Face
# model types; every other encoder (BERT, RoBERTa, DistilBERT, ELECTRA, MiniLM, ...) is "bert".
ORT_MODEL_TYPES = {"vit": "vit", "swin": "swin", "bart": "bart", "gpt2": "gpt2", "t5": "t5", "clip": "clip"}
# ONNX Runtime's own graph optimizations before the Python fusions: basic = constant folding and
# redundant-node removal, portable (extended/all would tie the saved graph to this CPU).
FUSE_OPT_LEVEL = 1


def hf_model(model: nn.Module) -> nn.Module | None:
    """The ``transformers.PreTrainedModel`` inside the pipeline's wrappers (``SelectOutput``,
    ``models.hf.TokenClassifier``), or None for any other model."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    for _ in range(4):  # SelectOutput(TokenClassifier(PreTrainedModel)) at most, in practice
        if isinstance(model, PreTrainedModel):
            return model
        inner = getattr(model, "hf", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return model if isinstance(model, PreTrainedModel) else None


def ort_model_type(model: nn.Module | None) -> str:
    """ONNX Runtime's optimizer type for a model (``bert`` unless its config names another)."""
    config = getattr(model, "config", None)
    return ORT_MODEL_TYPES.get(str(getattr(config, "model_type", "")), "bert")


@contextlib.contextmanager
def _quiet():
    """The exporter's prints and warnings, and the info/warning logs of optimum and of ONNX Runtime's
    optimizer (whose modules log under top-level names such as ``fusion_attention``), off."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with _quiet_exporter():
            yield
    finally:
        logging.disable(previous)


def export_optimum(model: nn.Module, example: Inputs, path: Path, opset: int, where: str) -> Path:
    """Export a Hugging Face classifier with optimum-onnx: inputs named and ordered as the data's
    (``example``), their dynamic axes named as in the input spec, one output ``logits`` of shape
    (batch, classes). ``where`` names the stage in the one-line errors."""
    inner = hf_model(model)
    if inner is None:
        raise UserError(f"{where}: exporter: optimum exports Hugging Face models (model: {{hf: folder}}) only")
    if not isinstance(example, dict):
        raise UserError(f"{where}: exporter: optimum needs named token inputs (input_ids, attention_mask)")
    axes = dynamic_axes(example)
    if "attention_mask" not in axes:
        raise UserError(
            f"{where}: exporter: optimum needs an attention_mask input in the data (the pipeline's model derives "
            "it from the padding id, which the exported graph would not); use exporter: torch"
        )
    try:
        from optimum.exporters.onnx import onnx_export_from_model
        from optimum.exporters.tasks import TasksManager
    except ImportError as exc:
        raise UserError(f"{where}: exporter: optimum needs optimum-onnx installed ({first_line(exc)})") from None
    work = path.parent / f".{path.stem}.optimum"
    shutil.rmtree(work, ignore_errors=True)
    was_training = inner.training
    try:
        with _quiet():
            constructor = TasksManager.get_exporter_config_constructor(
                exporter="onnx", model=inner, task=OPTIMUM_TASK, library_name="transformers"
            )
            base = constructor(inner.config)
            unknown = [n for n in axes if n not in base.inputs]
            if unknown:
                raise StageFailed(
                    f"{where}: optimum's ONNX config for {type(inner).__name__} takes {', '.join(base.inputs)}, "
                    f"not the data's {', '.join(unknown)}"
                )
            if "logits" not in base.outputs:
                raise StageFailed(f"{where}: optimum's ONNX config for {type(inner).__name__} has no logits output")
            batch = axes[next(iter(axes))].get(0, "batch")
            named = type(
                f"EdgeslimInputs{type(base).__name__}",
                (type(base),),
                {
                    "inputs": property(lambda self: {n: dict(a) for n, a in axes.items()}),
                    "outputs": property(lambda self: {"logits": {0: batch}}),
                },
            )
            config = named(inner.config, task=OPTIMUM_TASK)
            onnx_export_from_model(
                inner.eval(),
                work,
                opset=opset,
                task=OPTIMUM_TASK,
                custom_onnx_configs={"model": config},
                do_validation=False,  # the export stage checks the whole test split instead
            )
        proto = load_onnx(work / "model.onnx", "optimum export")
    except (UserError, StageFailed):
        raise
    except Exception as exc:
        raise StageFailed(
            f"{where}: optimum could not export the model: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    finally:
        inner.train(was_training)
        shutil.rmtree(work, ignore_errors=True)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != list(axes) or outputs != ["logits"]:
        raise StageFailed(
            f"{where}: optimum's export takes {inputs} and returns {outputs}; expected {list(axes)} -> ['logits']"
        )
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))  # one file, weights inside (optimum may have written external data)
    tmp.replace(path)
    return path


@dataclass
class Fusion:
    """What ONNX Runtime's transformer optimizer fused: operator -> count (nonzero counts only)."""

    counts: dict[str, int]
    model_type: str
    typed: bool = False  # value_info recorded for every tensor (what ONNX Runtime's quantizers need)

    def line(self) -> str:
        fused = ", ".join(f"{op} x{n}" for op, n in self.counts.items())
        return fused or "nothing"


def fuse_transformer(source: Path, out: Path, model_type: str = "bert") -> Fusion:
    """Write ONNX Runtime's transformer-optimized graph of ``source`` to ``out``; heads and hidden
    size are read from the graph. Raises what the optimizer raises; the caller reports it."""
    from onnxruntime.transformers.optimizer import optimize_model

    # Checked like every file the pipeline reads; given as a path: from a ModelProto, the optimizer moves every
    # initializer out as an external one, and ONNX Runtime's constant folding then cannot read the dynamo
    # exporter's shape constants ("Cannot parse data from external tensors").
    check_onnx_file(source, "model to fuse")
    with _quiet():
        optimizer = optimize_model(
            str(source), model_type=model_type, num_heads=0, hidden_size=0, opt_level=FUSE_OPT_LEVEL
        )
        counts = {op: int(n) for op, n in optimizer.get_fused_operator_statistics().items() if n}
        optimizer.save_model_to_file(str(out), use_external_data_format=False)
    return Fusion(counts, model_type, typed=bool(counts) and _record_types(out))


def _record_types(path: Path) -> bool:
    """Write the element types and shapes of the fused graph's tensors (``value_info``), from ONNX Runtime's
    symbolic shape inference, which knows its contrib ops. ONNX's own inference stops at the first
    ``com.microsoft`` op, and ONNX Runtime's quantizers then fail on the untyped tensors after it ("Unable
    to find data type for weight_name", "Unable to get valid quantization scale"). False if it fails."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        with _quiet():
            typed = SymbolicShapeInference.infer_shapes(load_onnx(path, "fused model"), auto_merge=True)
    except Exception:  # the graph runs all the same; only a later quantization may fail, and says so
        return False
    onnx.save(typed, str(path))
    return True
