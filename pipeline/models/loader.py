"""Saving and rebuilding PyTorch model artifacts without pickling whole models.

An artifact stores ``model.safetensors`` plus ``pruning_history.json``: the ordered edits
made to the original architecture — torch-pruning history entries (removed channels) and
head replacements (``{"head": {...}}``). To load, the original architecture is built from the
run's model spec, the edits are replayed in order, and the weights are loaded. QAT artifacts
are prepared again the same way and then receive their fake-quant state.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.config.schema import ModelSpec, canonical_hash
from edgeslim.data.batches import Inputs, call, describe, select
from edgeslim.engine.store import TORCH, TORCH_QAT, Artifact, read_json, sha256_file, write_json
from edgeslim.errors import UserError
from edgeslim.models import hf
from edgeslim.models.zoo import build_model, load_state_dict_file, load_weights
from edgeslim.quant import qat

WEIGHTS = "model.safetensors"
HISTORY = "pruning_history.json"


def count_params_and_macs(model: nn.Module, example: Inputs) -> tuple[int, int]:
    import torch_pruning as tp

    model.eval()
    # torch-pruning's counter prints a warning for keyword-only inputs; it counts one sample anyway
    with contextlib.redirect_stdout(io.StringIO()):
        macs, params = tp.utils.count_ops_and_params(model, select(example, slice(0, 1)))
    return int(params), int(macs)


@dataclass
class ModelLoader:
    """Builds the run's architecture and turns artifacts back into modules."""

    spec: ModelSpec
    in_channels: int
    num_classes: int
    example: Inputs
    allow_other_classes: bool = False
    seed: int = 0  # random initial weights are a function of the run's seed, so a fresh process rebuilds them

    def source_hash(self) -> str:
        """Identity of the starting model: spec plus the checkpoint's bytes."""
        ckpt = self.spec.checkpoint
        identity = {
            "spec": self.spec.model_dump(mode="json", exclude={"hf", "task"} if self.spec.hf is None else None),
            "checkpoint_sha256": sha256_file(ckpt) if ckpt else None,
        }
        if self.spec.hf is not None:
            identity["hf_files_sha256"] = hf.files_sha256(self.spec.hf)
        return canonical_hash(identity)

    def build(self) -> nn.Module:
        # A factory's random init must not depend on what ran before in this process (or on a fresh
        # process's unseeded RNG): seed it, without disturbing the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.spec.hf is not None:
                model: nn.Module = hf.load(self.spec.hf, self.spec.task, self.num_classes)
            else:
                model = build_model(self.spec.name, self.spec.kwargs, self.in_channels, self.num_classes)
            return select_output(model, self.spec.output, self.example)

    def source_model(self) -> nn.Module:
        """The starting model: architecture plus the configured checkpoint (if any)."""
        model = self.build()
        if self.spec.checkpoint is not None:
            state = load_state_dict_file(self.spec.checkpoint)
            load_weights(model.model if isinstance(model, SelectOutput) else model, state, "model.checkpoint")
        self._check_forward(model)
        return model

    @property
    def _what(self) -> str:
        return "model.hf" if self.spec.hf is not None else "model.name"

    def _check_forward(self, model: nn.Module) -> None:
        """The model must map the data's inputs to logits; a different class count is allowed
        only when a later stage replaces the head (``allow_other_classes``)."""
        model.eval()
        try:
            with torch.no_grad():
                out = call(model, self.example)
        except Exception as exc:
            raise UserError(
                f"{self._what}: model '{self.spec.hf or self.spec.name}' cannot run on the data's inputs "
                f"({describe(self.example)}): {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        classes_ok = isinstance(out, torch.Tensor) and (self.allow_other_classes or out.shape[-1] == self.num_classes)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or not classes_ok:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(
                f"{self._what}: model '{self.spec.hf or self.spec.name}' must return logits of shape "
                f"(batch, {self.num_classes}); "
                f"got {shape} (to adapt it to this task, give a finetune stage a head: {{}})"
            )

    def load(self, artifact: Artifact) -> nn.Module:
        """Rebuild the module an artifact describes (float or QAT-prepared)."""
        if artifact.directory is None:
            return self.source_model()
        if artifact.kind not in (TORCH, TORCH_QAT):
            raise ValueError(f"not a PyTorch artifact: {artifact.kind}")
        model = self.build()
        apply_edits(model, read_json(artifact.file("pruning_history")), self.example)
        if artifact.kind == TORCH_QAT:
            model = qat.prepare_qat(model, self.example, artifact.meta.get("qat_weight_bits", 8))
        from safetensors.torch import load_file

        load_weights(model, load_file(str(artifact.file("weights"))), f"artifact {artifact.directory}")
        model.eval() if artifact.kind == TORCH else qat.set_mode(model, False)
        return model

    def load_deployable(self, artifact: Artifact) -> nn.Module:
        """The module that ships for a PyTorch artifact: a QAT model converted to real INT8 ops, a float
        one as it is (what the export stage and every stage's evaluation export to ONNX)."""
        model = self.load(artifact)
        return qat.convert(model) if artifact.kind == TORCH_QAT else model

    def history_of(self, artifact: Artifact) -> list[Any]:
        if artifact.directory is None:
            return []
        return read_json(artifact.file("pruning_history"))


class SelectOutput(nn.Module):
    """A model that returns a dict, a Hugging Face ``ModelOutput`` or a tuple, reduced to the one
    output that holds the class scores (``model.output``), so every stage sees a classifier."""

    def __init__(self, model: nn.Module, key: str | int):
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)[self.key]

    @classmethod
    def around(cls, model: nn.Module, key: str | int) -> SelectOutput:
        """The wrapper, with the wrapped model's ``forward`` signature: ``torch.export`` (ONNX export,
        QAT) matches inputs and their dynamic axes to the parameters by name."""
        import inspect

        signature = inspect.signature(model.forward)
        me = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

        def forward(self: SelectOutput, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self.model(*args, **kwargs)[self.key]

        forward.__signature__ = signature.replace(parameters=[me, *signature.parameters.values()])  # type: ignore[attr-defined]
        return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__})(model, key)


def select_output(model: nn.Module, output: str | int | None, example: Inputs) -> nn.Module:
    """``model`` as it is when it returns one tensor, else wrapped in :class:`SelectOutput`."""
    from collections.abc import Mapping

    was_training = model.training
    try:
        with torch.no_grad():
            out = call(model.eval(), example)
    except Exception:  # the forward check that follows reports it, with the input shape
        return model.train(was_training)
    model.train(was_training)
    what = "model.output"
    if isinstance(out, torch.Tensor):
        if output is not None:
            raise UserError(f"{what}: the model returns one tensor; remove output (it is only for dicts and tuples)")
        return model
    if isinstance(out, Mapping):
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        key: str | int = output if output is not None else ("logits" if "logits" in keys else (keys or [""])[0])
        if key not in keys:
            raise UserError(f"{what}: the model's outputs are named {', '.join(map(repr, keys))}; '{key}' is not one")
    elif isinstance(out, tuple | list):
        key = 0 if output is None else output
        if not isinstance(key, int) or not -len(out) <= key < len(out) or not isinstance(out[key], torch.Tensor):
            raise UserError(f"{what}: the model returns {len(out)} outputs; give the index of the class scores")
    else:
        raise UserError(f"{what}: the model returns a {type(out).__name__}, not a tensor, dict or tuple of tensors")
    return SelectOutput.around(model, key)


def save_torch_artifact(
    directory: Path,
    model: nn.Module,
    *,
    kind: str,
    pruning_history: list[Any],
    params: int,
    macs: int,
    extra: dict[str, Any] | None = None,
) -> Artifact:
    """Write weights (safetensors), pruning history and ``artifact.json`` into ``directory``."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = directory / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp))
    tmp.replace(directory / WEIGHTS)
    write_json(directory / HISTORY, pruning_history)
    artifact = Artifact(
        kind=kind,
        directory=directory,
        meta={
            "files": {"weights": WEIGHTS, "pruning_history": HISTORY},
            "params": params,
            "macs": macs,
            **(extra or {}),
        },
    )
    artifact.save()
    return artifact


def output_layer_name(model: nn.Module, example: Inputs) -> str:
    """The module whose output is the model's output (the classifier), else the last Linear."""
    outputs: dict[str, object] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name, m in model.named_modules()
        if name and not list(m.children())
    ]
    try:
        model.eval()
        with torch.no_grad():
            final = call(model, example)
    finally:
        for h in hooks:
            h.remove()
    for name, out in outputs.items():
        if out is final:
            return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("cannot find the model's classifier layer; name it with head.layer")
    return linears[-1]


def replace_head(model: nn.Module, spec: dict[str, Any]) -> None:
    """Swap the output layer for ``Linear(in, h1) -> ReLU -> Dropout ... -> Linear(h, classes)``."""
    parent_name, _, attr = spec["layer"].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise UserError(f"head.layer: '{spec['layer']}' is a {type(old).__name__}, not a Linear layer")
    layers: list[nn.Module] = []
    width = old.in_features
    for hidden in spec.get("hidden", []):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec.get("dropout", 0.0))]
        width = hidden
    layers.append(nn.Linear(width, spec["num_classes"]))
    setattr(parent, attr, layers[0] if len(layers) == 1 else nn.Sequential(*layers))


def apply_edits(model: nn.Module, edits: list[Any], example: Inputs) -> None:
    """Replay architecture edits in order: runs of pruning-history entries, head swaps, and the attention
    head counts a prune that removed whole heads recorded (``{"attention_heads": {name: count}}``),
    removed transformer blocks (``{"drop_layers": {...}}``), skipped blocks of other models
    (``{"drop_blocks": {...}}``) and vocabulary pruning (``{"vocabulary": {...}}``)."""
    import torch_pruning as tp

    from edgeslim.prune.graph import HEAD_COUNTS, find_unused, graph_arguments, set_head_counts, sync_head_dims
    from edgeslim.prune.layers import DROP_BLOCKS, DROP_LAYERS, apply_drop, apply_drop_blocks
    from edgeslim.prune.vocab import VOCABULARY, apply_vocabulary

    pending: list[Any] = []

    def flush() -> None:
        if pending:
            model.eval()
            dead = find_unused(model, example).dead  # traced as the prune stage traced them
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, **graph_arguments(model, dead))
            graph.load_pruning_history(pending)
            sync_head_dims(model)  # the attributes the prune stage updated with the channels
            pending.clear()

    for edit in edits:
        if isinstance(edit, dict) and "head" in edit:
            flush()
            replace_head(model, edit["head"])
        elif isinstance(edit, dict) and HEAD_COUNTS in edit:
            flush()
            set_head_counts(model, edit[HEAD_COUNTS])
        elif isinstance(edit, dict) and DROP_LAYERS in edit:
            flush()
            apply_drop(model, edit[DROP_LAYERS])
        elif isinstance(edit, dict) and DROP_BLOCKS in edit:
            flush()
            apply_drop_blocks(model, edit[DROP_BLOCKS])
        elif isinstance(edit, dict) and VOCABULARY in edit:
            flush()
            apply_vocabulary(model, edit[VOCABULARY])
        else:
            pending.append(edit)
    flush()
