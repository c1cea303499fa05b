"""What torch-pruning needs to know about a model beyond its Conv/Linear layers, and where a pruned
model breaks.

torch-pruning traces channel dependencies through autograd from the model's output. Whatever that
trace cannot see, it cannot keep consistent; this module finds those parts so the prune stage can
tell torch-pruning about them, or leave them alone and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
