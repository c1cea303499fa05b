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

from edgeslim.data.batches import Inputs, call
from edgeslim.errors import first_line


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


def locate_failure(model: nn.Module, example: Inputs) -> ForwardFailure | None:
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
            call(model, example)
    except Exception as exc:  # any failure of the pruned model is reported, with its place
        message = first_line(exc, 1000)
        after = next((n for n in reversed(finished) if n), None)
        return ForwardFailure(running[-1] if running else "", after, f"{type(exc).__name__}: {message}")
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


def _forward_with_outputs_of(modules: list[nn.Module]) -> Callable[[nn.Module, Inputs], tuple[Any, ...]]:
    """A torch-pruning ``forward_fn``: the model's output followed by the outputs of ``modules``."""

    def forward(model: nn.Module, example: Inputs) -> tuple[Any, ...]:
        captured: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: captured.extend(_tensors(out)[:1])) for m in modules]
        try:
            output = call(model, example)
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


def find_unused(model: nn.Module, example: Inputs) -> Unused:
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
            used = _leaf_tensors(_tensors(call(model, example)))
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


HEAD_COUNTS = "attention_heads"  # the pruning-history edit that records head counts after whole heads are removed


def head_projections(module: nn.Module) -> tuple[str, list[nn.Linear]] | None:
    """The attribute holding a self-attention module's head count and the Linears whose outputs it splits
    into heads, for the two layouts found by name: timm's (``num_heads`` and one ``qkv``) and Hugging Face
    BERT's (``num_attention_heads`` and ``query``/``key``/``value``); ``None`` for anything else.
    torch-pruning must be told these heads, or the pruned outputs no longer split evenly into them."""
    heads = getattr(module, "num_heads", None)
    qkv = getattr(module, "qkv", None)
    if isinstance(heads, int) and heads > 0 and isinstance(qkv, nn.Linear):
        return "num_heads", [qkv]
    heads = getattr(module, "num_attention_heads", None)
    layers = [getattr(module, name, None) for name in ("query", "key", "value")]
    if isinstance(heads, int) and heads > 0 and all(isinstance(m, nn.Linear) for m in layers):
        return "num_attention_heads", layers  # type: ignore[return-value]
    return None


def head_counts(model: nn.Module) -> dict[str, int]:
    """Each recognised attention module's head count, by dotted name (recorded in the pruning history
    when whole heads go, since nothing in the pruned shapes tells how many heads are left)."""
    counts = {}
    for name, module in model.named_modules():
        found = head_projections(module)
        if found is not None:
            counts[name] = getattr(module, found[0])
    return counts


def set_head_counts(model: nn.Module, counts: dict[str, int]) -> None:
    """Set the head counts a pruning-history edit recorded, then the sizes derived from them."""
    modules = dict(model.named_modules())
    for name, heads in counts.items():
        found = head_projections(modules[name]) if name in modules else None
        if found is None:
            raise ValueError(f"pruning history: '{name}' is not an attention module of this model")
        setattr(modules[name], found[0], int(heads))
    sync_head_dims(model)


def sync_head_dims(model: nn.Module) -> None:
    """After pruning head dimensions evenly across heads (torch-pruning's ``num_heads``), set the sizes
    the attention's forward reshapes with, so that the pruned outputs still split into its heads: timm's
    ``head_dim`` (``reshape(b, n, 3, num_heads, head_dim)``), BERT's ``attention_head_size`` and
    ``all_head_size`` (``view(b, -1, num_attention_heads, attention_head_size)``). A model rebuilt
    from its pruning history needs the same update."""
    for module in model.modules():
        found = head_projections(module)
        if found is None:
            continue
        attr, layers = found
        heads, width = getattr(module, attr), layers[0].out_features
        if attr == "num_heads":
            if isinstance(getattr(module, "head_dim", None), int) and width % (3 * heads) == 0:
                module.head_dim = width // (3 * heads)
        elif width % heads == 0:
            module.attention_head_size = width // heads
            module.all_head_size = width
