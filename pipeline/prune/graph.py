"""What torch-pruning needs to know about a model beyond its Conv/Linear layers, and where a pruned
model breaks.

torch-pruning traces channel dependencies through autograd from the model's output. Whatever that
trace cannot see, it cannot keep consistent; this module finds those parts so the prune stage can
tell torch-pruning about them, or leave them alone and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn


@dataclass(frozen=True)
class ForwardFailure:
    """Where a forward pass raised: the innermost module still running (``""``: the model's own
    ``forward``), the last module that had finished, and the error's first line."""

    module: str
    after: str | None
    error: str

    def describe(self) -> str:
        place = f"in '{self.module}'" if self.module else "in the model's own forward"
        after = f", after '{self.after}' ran" if self.after else ""
        return f"{self.error} ({place}{after})"


def locate_failure(model: nn.Module, example: torch.Tensor) -> ForwardFailure | None:
    """Run ``model(example)`` and, if it raises, say in which module: a pruned model that no longer
    runs must become a one-line error naming the layers involved, not a traceback from deep inside."""
    running: list[str] = []
    finished: list[str] = []

    def enter(name: str):
        return lambda _m, _i: running.append(name)

    def leave(name: str):
        def hook(_m, _i, _o) -> None:
            running.pop()
            finished.append(name)

        return hook

    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave(name))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # any failure of the pruned model is reported, with its place
        first_line = (str(exc).strip().splitlines() or [""])[0]
        after = next((n for n in reversed(finished) if n), None)
        return ForwardFailure(running[-1] if running else "", after, f"{type(exc).__name__}: {first_line}")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return None


def unwrapped_parameters(model: nn.Module) -> dict[str, tuple[nn.Parameter, int]]:
    """Parameters held outside the layers torch-pruning has pruners for (a ViT's ``cls_token`` and
    ``pos_embed``, a layer scale), by name, with the dimension that carries their channels: the last
    one longer than 1 (the embedding width of a ``[1, tokens, width]`` table, the channels of a
    ``[1, C, 1, 1]`` scale). That is torch-pruning's own default, so a model rebuilt from its pruning
    history without these arguments prunes them the same way; given explicitly, they are named in
    the stage's details instead of a warning from deep inside torch-pruning."""
    graph = tp.DependencyGraph()
    known = {t for t in graph.REGISTERED_PRUNERS if t != tp.ops.OPTYPE.ELEMENTWISE}
    wrapped = {id(p) for m in model.modules() if tp.ops.module2type(m) in known for p in m.parameters()}
    found: dict[str, tuple[nn.Parameter, int]] = {}
    for name, param in model.named_parameters():
        dims = [i for i, size in enumerate(param.shape) if size > 1]
        if id(param) not in wrapped and dims:
            found[name] = (param, dims[-1])
    return found


def graph_arguments(model: nn.Module, dead: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments for torch-pruning's dependency graph (``BasePruner`` or ``build_dependency``)
    that describe this model the same way wherever it is traced: when pruning and when a model is
    rebuilt from its pruning history. ``dead``: modules that run but whose output never reaches the
    model's output (:func:`find_unused`); their outputs join the traced outputs, so torch-pruning
    shrinks their inputs with the layers that feed them instead of leaving them a width too wide."""
    arguments: dict[str, Any] = {"unwrapped_parameters": [(p, dim) for p, dim in unwrapped_parameters(model).values()]}
    if dead:
        modules = dict(model.named_modules())
        arguments["forward_fn"] = _forward_with_outputs_of([modules[n] for n in dead])
    return arguments


def _forward_with_outputs_of(modules: list[nn.Module]) -> Callable[[nn.Module, torch.Tensor], tuple[Any, ...]]:
    """A torch-pruning ``forward_fn``: the model's output followed by the outputs of ``modules``."""

    def forward(model: nn.Module, example: torch.Tensor) -> tuple[Any, ...]:
        captured: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: captured.extend(_tensors(out)[:1])) for m in modules]
        try:
            output = model(example)
        finally:
            for handle in handles:
                handle.remove()
        return (output, *captured)

    return forward


@dataclass(frozen=True)
class Unused:
    """Modules holding parameters that do not contribute to the model's output, by dotted name:
    ``never_called`` (a spare layer) and ``dead`` (runs, but its result is dropped: a Hugging Face
    pooler whose output the classification head ignores)."""

    never_called: list[str]
    dead: list[str]

    @property
    def all(self) -> list[str]:
        return self.never_called + self.dead


def find_unused(model: nn.Module, example: torch.Tensor) -> Unused:
    """Which parameter-holding modules the model's output does not depend on, found with forward hooks
    and a walk of the output's autograd graph (what torch-pruning traces, too). torch-pruning never sees
    them: a module that never runs is merely left as it is, but one that runs on a pruned tensor and
    was not shrunk with it breaks the next forward pass (``mat1 and mat2 shapes cannot be multiplied``)."""
    holders = {name: m for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))}
    called: set[str] = set()
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=name: called.add(n)) for name, m in holders.items()]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    was_training = model.training
    for param in frozen:  # frozen weights still count: their module is used all the same
        param.requires_grad_(True)
    model.eval()
    try:
        with torch.enable_grad():
            used = _leaf_tensors(_tensors(model(example)))
    finally:
        for handle in handles:
            handle.remove()
        for param in frozen:
            param.requires_grad_(False)
        model.train(was_training)
    idle = [n for n, m in holders.items() if not any(id(p) in used for p in m.parameters(recurse=False))]
    return Unused([n for n in idle if n not in called], [n for n in idle if n in called])


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in a model or module output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [t for item in obj for t in _tensors(item)]
    return []


def _leaf_tensors(outputs: list[torch.Tensor]) -> set[int]:
    """``id`` of every leaf tensor (parameter) that the outputs' autograd graphs reach."""
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen: set[Any] = set()
    leaves: set[int] = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if getattr(fn, "variable", None) is not None:  # AccumulateGrad: a leaf
            leaves.add(id(fn.variable))
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return leaves


def parameter_conflicts(
    model: nn.Module,
    example: torch.Tensor,
    ignored: list[nn.Module],
    root_types: tuple[type, ...],
    dead: list[str] | tuple[str, ...] = (),
) -> dict[str, list[str]]:
    """Bare parameters whose channel dimension does not match the channels of the layers they join
    (a ``[1, width, tokens]`` table used transposed, say), with the layers whose output channels
    would have to shrink with them: those layers must stay whole, or the model breaks."""
    found = unwrapped_parameters(model)
    if not found:
        return {}
    names = {m: n for n, m in model.named_modules()}
    param_names = {id(p): n for n, (p, _) in found.items()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, **graph_arguments(model, dead))
    whole = {m for layer in ignored for m in layer.modules()}
    conflicts: dict[str, set[nn.Module]] = {}
    for group in graph.get_all_groups(ignored_layers=list(whole), root_module_types=root_types):
        bad = [
            param_names[id(dep.target.module)]
            for dep, idxs in group
            if dep.target.type == tp.ops.OPTYPE.PARAMETER
            and id(dep.target.module) in param_names
            and len(idxs) != dep.target.module.shape[dep.target.pruning_dim]
        ]
        layers = {
            dep.target.module
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, root_types)
        }
        for name in bad:
            conflicts.setdefault(name, set()).update(layers)
    order = list(names)  # model order, for a stable, readable list
    return {p: [names[m] for m in sorted(layers, key=order.index)] for p, layers in conflicts.items()}


def sync_head_dims(model: nn.Module) -> None:
    """After pruning head dimensions evenly across heads (torch-pruning's ``num_heads``), set the
    ``head_dim`` attribute that timm-style attention reshapes ``qkv`` with, so that
    ``reshape(b, n, 3, num_heads, head_dim)`` still fits; a model rebuilt from its pruning history
    needs the same update."""
    for module in model.modules():
        heads, qkv = getattr(module, "num_heads", None), getattr(module, "qkv", None)
        if not (isinstance(heads, int) and heads > 0 and isinstance(qkv, nn.Linear)):
            continue
        if isinstance(getattr(module, "head_dim", None), int) and qkv.out_features % (3 * heads) == 0:
            module.head_dim = qkv.out_features // (3 * heads)
