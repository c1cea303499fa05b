"""Channel-importance criteria for structural pruning, as torch-pruning ``Importance`` objects.

``l1``/``l2`` use weight magnitudes; ``taylor`` uses |w * dL/dw| with gradients accumulated
over calibration batches; ``hessian`` is our Optimal-Brain-Damage criterion
``0.5 * H_ii * w_i^2`` with the Hessian diagonal estimated by the empirical Fisher: the mean
of per-sample squared gradients over *all* calibration samples. (torch-pruning 1.6.1's own
HessianImportance keys its accumulator inconsistently and keeps only the last sample.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.func import functional_call, grad, vmap

CriterionName = Literal["l1", "l2", "taylor", "hessian"]


class FisherDiagonal:
    """Running mean of per-sample squared gradients, per parameter name."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, chunk: int = 32) -> None:
        """Add the squared per-sample gradients of the cross-entropy loss for every sample."""
        model.eval()  # BatchNorm uses running statistics: each sample's gradient is its own
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def sample_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
            return F.cross_entropy(logits, y.unsqueeze(0))

        per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        for i in range(0, len(inputs), chunk):
            grads = per_sample_grad(params, inputs[i : i + chunk], labels[i : i + chunk])
            for name, g in grads.items():
                sq = g.pow(2).sum(0)
                self.sums[name] = self.sums[name] + sq if name in self.sums else sq
            self.count += len(inputs[i : i + chunk])

    def mean(self) -> dict[str, torch.Tensor]:
        return {name: s / self.count for name, s in self.sums.items()}


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

    def accumulate(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.fisher.add(model, inputs, labels)

    def load_into_grads(self, model: nn.Module) -> None:
        mean = self.fisher.mean()
        for name, param in model.named_parameters():
            if name in mean:
                param.grad = mean[name].clone()


def build_importance(name: CriterionName) -> tp.importance.Importance:
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    return OBDHessianImportance()


def prepare_importance(
    importance: tp.importance.Importance,
    model: nn.Module,
    inputs: torch.Tensor,
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
        batches = range(0, len(inputs), batch_size)
        for i in batches:
            loss = F.cross_entropy(model(inputs[i : i + batch_size]), labels[i : i + batch_size])
            (loss / len(batches)).backward()
