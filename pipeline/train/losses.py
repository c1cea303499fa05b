"""Training losses: cross-entropy (with label smoothing), focal loss, distillation from one or
an ensemble of teachers, intermediate-feature (hint) loss, layer-by-layer transformer distillation
(``layer_distill``) and an L1 weight penalty.

A loss is a callable ``(model, x, y) -> scalar``; ``compose_loss`` builds one from config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgeslim.config.schema import StrictModel
from edgeslim.data.batches import Inputs, call
from edgeslim.train.layer_distill import LayerDistiller

LossFn = Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]


class LossConfig(StrictModel):
    name: Literal["cross_entropy", "focal"] = "cross_entropy"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0, description="focal: down-weights easy examples")
    l1_penalty: float = Field(0.0, ge=0, description="lambda * sum |w| over weight tensors")


def classification_loss(logits: torch.Tensor, y: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    if cfg.name == "focal":
        log_p = F.log_softmax(logits, dim=1)
        log_pt = log_p.gather(1, y[:, None]).squeeze(1)
        return (-((1 - log_pt.exp()) ** cfg.focal_gamma) * log_pt).mean()
    return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)


@torch.no_grad()
def ensemble_probs(teachers: Sequence[nn.Module], x: Inputs, temperature: float) -> torch.Tensor:
    """Mean of the teachers' softened output distributions."""
    return torch.stack([F.softmax(call(t, x) / temperature, dim=1) for t in teachers]).mean(0)


def distillation_term(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T) (Hinton et al., 2015)."""
    log_student = F.log_softmax(logits / temperature, dim=1)
    return temperature**2 * F.kl_div(log_student, teacher_probs, reduction="batchmean")


class FeatureTap:
    """Captures one module's output on every forward pass."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self.value = output

    def remove(self) -> None:
        self.handle.remove()


def make_adapter(student_channels: int, teacher_channels: int, spatial: bool) -> nn.Module:
    """Learned projection from the (pruned) student's features to the teacher's width."""
    if spatial:
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    return nn.Linear(student_channels, teacher_channels, bias=False)


def compose_loss(
    cfg: LossConfig,
    *,
    teachers: Sequence[nn.Module] = (),
    temperature: float = 4.0,
    alpha: float = 0.5,
    hint: tuple[FeatureTap, FeatureTap, nn.Module, float] | None = None,
    layers: LayerDistiller | None = None,
) -> LossFn:
    """``(1 - alpha) * task + alpha * distill + hint_weight * hint + layers + l1 * sum|w|``."""

    def loss(model: nn.Module, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        logits = call(model, x)
        task = classification_loss(logits, y, cfg)
        if teachers:
            total = (1 - alpha) * task + alpha * distillation_term(
                logits, ensemble_probs(teachers, x, temperature), temperature
            )
        else:
            total = task
        if hint is not None:  # the taps were filled by the student's and the teachers' forward passes above
            student_tap, teacher_tap, adapter, weight = hint
            total = total + weight * F.mse_loss(adapter(student_tap.value), teacher_tap.value.detach())
        if layers is not None:  # its hooks, too, were filled by the forward passes above
            total = total + layers.loss(x)
        if cfg.l1_penalty > 0:
            total = total + cfg.l1_penalty * sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)
        return total

    return loss
