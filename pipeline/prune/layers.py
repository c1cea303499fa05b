"""Whole transformer blocks removed: depth pruning, before heads and FFN neurons are pruned.

Channel and head pruning make every block cheaper; dropping blocks removes their cost entirely,
which is what latency on a phone rewards most for a 6- or 12-block encoder. Which blocks go is
decided by measurement, not a proxy: each remaining block is skipped in turn (replaced by the
identity, so its residual stream passes through unchanged) and the block whose absence raises
the loss on the calibration samples the least is removed; then the rest are scored again, until
the requested number is gone (greedy, as in "block influence" depth pruning of LLMs).

Blocks are the model's ``…layer.N`` / ``…layers.N`` / ``…blocks.N`` / ``…h.N`` modules held in an
``nn.ModuleList`` or ``nn.Sequential`` the forward iterates (Hugging Face encoders, most
hand-written ViTs). The edit goes into the pruning history as
``{"drop_layers": {"container": name, "indices": [...], "kept": [...]}}`` and is replayed when the
model is loaded; ``kept`` (the surviving blocks' original indices) lets layer distillation map each
student block to the teacher block it came from.

Models without attention (ResNets, MobileNets, EfficientNets) drop **skippable blocks** instead: any
module held in an ``nn.Sequential``/``nn.ModuleList`` that has a convolution or linear layer and
returns a tensor of its input's shape (a residual block, a squeeze-excitation) can be replaced by the
identity. At the sizes edge models run, an INT8 convolution has a fixed cost of several microseconds
however few its channels, so removing whole blocks is what lowers latency once channels are thin.
The same greedy measurement picks them (or, since such blocks differ in cost, the loss increase per
millisecond each one's absence saves, timed by ``latency.block_savings``); the edit
``{"drop_blocks": {"blocks": [names], ...}}`` replaces them by ``nn.Identity`` (module names stay stable
for the pruning history after it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from edgeslim.data.batches import Inputs, call
from edgeslim.models.blocks import transformer_blocks

DROP_LAYERS = "drop_layers"
DROP_BLOCKS = "drop_blocks"
Key = TypeVar("Key")
MIN_SAVING_MS = 1e-3  # a block's saving below one microsecond is timing noise


class SkippedBlock(nn.Module):
    """Returns the block's input as the block would return its output (tensor or 1-tuple)."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states,) if self.as_tuple else hidden_states


def block_container(model: nn.Module) -> tuple[str, nn.Module]:
    """The name and module (``ModuleList``/``Sequential``) holding the transformer blocks."""
    blocks = transformer_blocks(model)
    if len(blocks) < 2:
        raise ValueError("no transformer blocks found (modules named like encoder.layer.0, layers.0 or blocks.0)")
    name = blocks[0][0].rsplit(".", 1)[0]
    container = model.get_submodule(name)
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"the blocks' container {name} is a {type(container).__name__}, not a ModuleList")
    return name, container


def _returns_tuple(model: nn.Module, block: nn.Module, example: Inputs) -> bool:
    seen: list[bool] = []
    handle = block.register_forward_hook(lambda _m, _i, out: seen.append(isinstance(out, tuple)))
    try:
        with torch.no_grad():
            call(model, example)
    finally:
        handle.remove()
    return bool(seen and seen[0])


@torch.no_grad()
def _loss_standing_in(
    model: nn.Module, parent: nn.Module, name: str, stand_in: nn.Module, x: Inputs, y: torch.Tensor, loss: Callable
) -> float:
    """The loss on ``(x, y)`` with ``parent``'s submodule ``name`` replaced by ``stand_in`` (put back
    afterwards): a transformer block by ``SkippedBlock`` in its list, a CNN block by ``nn.Identity``."""
    block = parent.get_submodule(name)
    parent.set_submodule(name, stand_in)
    try:
        return float(loss(call(model, x), y))
    finally:
        parent.set_submodule(name, block)


def skip_losses(
    model: nn.Module, container: nn.Module, x: Inputs, y: torch.Tensor, loss: Callable[[Any, torch.Tensor], Any]
) -> list[float]:
    """The loss on ``(x, y)`` with each block skipped in turn (the model is left unchanged)."""
    model.eval()
    as_tuple = _returns_tuple(model, container[0], x)
    return [
        _loss_standing_in(model, container, str(i), SkippedBlock(as_tuple), x, y, loss) for i in range(len(container))
    ]


def remove_blocks(model: nn.Module, container_name: str, indices: list[int]) -> None:
    """Delete blocks by index and keep a Hugging Face config's layer count in step."""
    container = model.get_submodule(container_name)
    kept = [container[i] for i in range(len(container)) if i not in set(indices)]
    for i in reversed(range(len(container))):
        del container[i]
    for block in kept:
        container.append(block)
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(container)
    for i, block in enumerate(container):  # Hugging Face blocks know their index (caches, logging)
        for sub in block.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = i


def greedy_drop(
    count: int,
    candidates: Callable[[], list[Key]],
    loss_without: Callable[[Key], float],
    drop: Callable[[Key], None],
) -> list[tuple[Key, dict[Key, float]]]:
    """The depth-pruning loop both kinds of model share: ``count`` times, score every candidate's
    absence, drop the cheapest, score the rest again. Returns each step's choice and all its scores."""
    steps = []
    for _ in range(count):
        losses = {key: loss_without(key) for key in candidates()}
        best = min(losses, key=losses.__getitem__)
        steps.append((best, losses))
        drop(best)
    return steps


def drop_blocks(
    model: nn.Module, count: int, x: Inputs, y: torch.Tensor, loss: Callable[[Any, torch.Tensor], Any]
) -> dict[str, Any]:
    """Remove ``count`` blocks greedily (least loss increase first); returns the history edit."""
    name, container = block_container(model)
    if count >= len(container):
        raise ValueError(f"cannot drop {count} of {len(container)} blocks: at least one must stay")
    model.eval()
    as_tuple = _returns_tuple(model, container[0], x)
    original = list(range(len(container)))
    dropped: list[int] = []

    def remove(i: int) -> None:
        dropped.append(original.pop(i))
        remove_blocks(model, name, [i])

    steps = greedy_drop(
        count,
        lambda: list(range(len(container))),
        lambda i: _loss_standing_in(model, container, str(i), SkippedBlock(as_tuple), x, y, loss),
        remove,
    )
    scores = [
        {"block": block, "loss_without": losses[best], "losses": list(losses.values())}
        for block, (best, losses) in zip(dropped, steps, strict=True)
    ]
    return {DROP_LAYERS: {"container": name, "indices": sorted(dropped), "kept": original, "scores": scores}}


def apply_drop(model: nn.Module, edit: dict[str, Any]) -> None:
    """Replay a recorded ``drop_layers`` edit on a freshly built model."""
    remove_blocks(model, edit["container"], list(edit["indices"]))


def skippable_blocks(model: nn.Module, example: Inputs) -> list[str]:
    """Names of the modules the identity can stand in for: children of an ``nn.Sequential`` or
    ``nn.ModuleList`` that hold a convolution or linear layer, run once per forward and return one
    tensor of their one input's shape and dtype (residual blocks, squeeze-excitations)."""
    seen: dict[str, list[bool]] = {}
    hooks = []

    def record(name: str, args: tuple[Any, ...], out: Any) -> None:
        same = (
            len(args) == 1
            and isinstance(args[0], torch.Tensor)
            and isinstance(out, torch.Tensor)
            and out.shape == args[0].shape
            and out.dtype == args[0].dtype
        )
        seen.setdefault(name, []).append(same)

    for parent_name, parent in model.named_modules():
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        for child_name, child in parent.named_children():
            if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in child.modules()):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                hooks.append(child.register_forward_hook(lambda _m, a, o, name=name: record(name, a, o)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, example)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [name for name, calls in seen.items() if calls == [True]]


@torch.no_grad()
def drop_skippable(
    model: nn.Module,
    count: int,
    example: Inputs,
    x: Inputs,
    y: torch.Tensor,
    loss: Callable[[Any, torch.Tensor], Any],
    savings_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Replace ``count`` skippable blocks by the identity, greedily (the one whose absence raises the loss
    on ``(x, y)`` least first, the rest scored again after each); returns the history edit.

    ``savings_ms`` (block -> milliseconds its absence saves, ``latency.block_savings``): rank by the loss
    increase per millisecond saved instead (an absence that lowers the loss: by the decrease times the
    milliseconds); savings under ``MIN_SAVING_MS`` (timing noise) count as that."""
    model.eval()
    dropped: list[str] = []

    def candidates() -> list[str]:
        names = skippable_blocks(model, example)
        if not names:
            found = f"only {len(dropped)}" if dropped else "none"
            raise ValueError(
                f"cannot drop {count} blocks: {found} can be skipped (a block held in a Sequential or ModuleList, "
                "with a convolution or linear layer, returning its input's shape)"
            )
        return names

    def loss_now() -> float | None:
        """The loss with every block dropped so far: what ranking by latency measures increases from."""
        return None if savings_ms is None else float(loss(call(model, x), y))

    def score(name: str) -> float:
        """The loss without the block, or (by latency) its increase per millisecond the block costs."""
        without = _loss_standing_in(model, model, name, nn.Identity(), x, y, loss)
        if base is None:  # ranking by loss alone
            return without
        increase, saved = without - base, max(savings_ms.get(name, 0.0), MIN_SAVING_MS)
        # an absence that lowers the loss ranks before any that raises it, the more it saves the sooner
        return increase / saved if increase > 0 else increase * saved

    base = loss_now()

    def skip(name: str) -> None:
        nonlocal base
        model.set_submodule(name, nn.Identity())
        dropped.append(name)
        base = loss_now()

    steps = greedy_drop(count, candidates, score, skip)
    key = "loss_without" if savings_ms is None else "loss_increase_per_ms"
    scores = [{"block": best, key: losses[best], "losses": losses} for best, losses in steps]
    return {DROP_BLOCKS: {"blocks": dropped, "scores": scores}}


def apply_drop_blocks(model: nn.Module, edit: dict[str, Any]) -> None:
    """Replay a recorded ``drop_blocks`` edit on a freshly built model."""
    for name in edit["blocks"]:
        model.set_submodule(name, nn.Identity())


def kept_blocks(history: list[Any]) -> list[int] | None:
    """The surviving blocks' original indices after every recorded drop (None: none dropped)."""
    kept: list[int] | None = None
    for edit in history:
        if isinstance(edit, dict) and DROP_LAYERS in edit:
            now = edit[DROP_LAYERS]["kept"]
            kept = now if kept is None else [kept[i] for i in now]
    return kept
