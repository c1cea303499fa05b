"""Channel-importance criteria for structural pruning, as torch-pruning ``Importance`` objects.

A criterion is a small factory registered by name (``@register_criterion``), the way
torch-pruning's ``importance.py`` keeps one small class per idea. ``l1``/``l2`` use weight
magnitudes; ``taylor`` uses |w * dL/dw| with gradients accumulated over calibration batches;
``hessian`` is our Optimal-Brain-Damage criterion ``0.5 * H_ii * w_i^2`` with the Hessian
diagonal estimated by the empirical Fisher: the mean of per-sample squared gradients over
*all* calibration samples. (torch-pruning 1.6.1's own HessianImportance keys its accumulator
inconsistently and keeps only the last sample.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from edgeslim.data.batches import Inputs, call, count, select
from edgeslim.train.importance import FisherDiagonal

CRITERIA: dict[str, Callable[[], tp.importance.Importance]] = {}


def register_criterion(name: str) -> Callable[[Callable[[], tp.importance.Importance]], Callable]:
    """Decorator: make a criterion factory available as ``prune: {importance: <name>}``."""

    def add(factory: Callable[[], tp.importance.Importance]) -> Callable[[], tp.importance.Importance]:
        CRITERIA[name] = factory
        return factory

    return add


class OBDHessianImportance(tp.importance.GroupHessianImportance):
    """Grouped OBD saliency with a correctly accumulated Fisher diagonal.

    Call :meth:`accumulate` over calibration data, then :meth:`load_into_grads` before the
    pruner step: torch-pruning's grouped scoring reads the Hessian diagonal from ``.grad``.
    """

    def __init__(self) -> None:
        super().__init__(group_reduction="mean", normalizer="mean")
        self.fisher = FisherDiagonal()

    def reset(self) -> None:
        self.fisher = FisherDiagonal()

    def accumulate(self, model: nn.Module, inputs: Inputs, labels: torch.Tensor) -> None:
        self.fisher.add(model, inputs, labels)

    def load_into_grads(self, model: nn.Module) -> None:
        mean = self.fisher.mean()
        for name, param in model.named_parameters():
            if name in mean:
                param.grad = mean[name].clone()


register_criterion("l1")(lambda: tp.importance.MagnitudeImportance(p=1))
register_criterion("l2")(lambda: tp.importance.MagnitudeImportance(p=2))
register_criterion("taylor")(tp.importance.TaylorImportance)
register_criterion("hessian")(OBDHessianImportance)


def build_importance(name: str) -> tp.importance.Importance:
    """A fresh criterion object by its registered name."""
    if name not in CRITERIA:
        raise KeyError(f"unknown pruning criterion '{name}'; registered: {', '.join(CRITERIA)}")
    return CRITERIA[name]()


def prepare_importance(
    importance: tp.importance.Importance,
    model: nn.Module,
    inputs: Inputs,
    labels: torch.Tensor,
    batch_size: int = 64,
) -> None:
    """Fill whatever the criterion reads (gradients) from calibration data; no-op for magnitudes."""
    if isinstance(importance, OBDHessianImportance):
        importance.reset()
        importance.accumulate(model, inputs, labels)
        importance.load_into_grads(model)
    elif isinstance(importance, tp.importance.GroupTaylorImportance):
        model.eval()
        model.zero_grad(set_to_none=True)
        batches = range(0, count(inputs), batch_size)
        for i in batches:
            loss = F.cross_entropy(call(model, select(inputs, slice(i, i + batch_size))), labels[i : i + batch_size])
            (loss / len(batches)).backward()
