"""The training engine shared by the ``train`` and ``finetune`` stages.

Built from small pieces so the fine-tuning issue can grow each one: ``build_optimizer``
(parameter groups; torch optimizers do the updates), ``build_schedule`` (per-step LR
multipliers), a loss callable, and ``fit`` (epochs, early stopping, best-state restore,
NaN detection, progress bars).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.config import StrictModel
from pipeline.errors import UserError
from pipeline.progress import progress_bar
from pipeline.qat import observers_paused, set_mode

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class OptimizerConfig(StrictModel):
    name: Literal["adamw", "adam", "sgd", "rmsprop", "adagrad"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop")
    nesterov: bool = False
    decay_norms_and_biases: bool = Field(False, description="apply weight decay to norm weights and biases too")


class ScheduleConfig(StrictModel):
    name: Literal["constant", "cosine", "step", "exponential"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0 before the schedule")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    step_epochs: int = Field(1, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step/exponential decay factor")


class TrainLoopConfig(StrictModel):
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    patience: int | None = Field(3, ge=1, description="early stopping: epochs without val improvement")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Two parameter groups: weights with decay, norms/biases without (unless asked)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if (param.dim() <= 1 or name.endswith(".bias")) else decay).append(param)
    if cfg.decay_norms_and_biases:
        decay, no_decay = decay + no_decay, []
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adagrad(groups, lr=cfg.lr)


def lr_multiplier(cfg: ScheduleConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """LR factor at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    t = step - warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_epochs)
    if cfg.name == "exponential":
        return cfg.gamma ** (t / steps_per_epoch)
    span = max(1, total_steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = steps_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(cfg, step, steps_per_epoch, total))


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float) -> LossFn:
    """Hinton et al.: ``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE``."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            teacher_logits = teacher(x)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=1),
            F.softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean",
        )
        return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(logits, y)

    return loss


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    set_mode(model, False)
    with observers_paused(model):
        return torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a PyTorch model on a split."""
    x, y = data.tensors
    logits = predict(model, x, batch_size)
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batches: int, batch_size: int) -> int:
    """Re-estimate BatchNorm running statistics (needed after pruning changes activations)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches == 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    seen = 0
    for i in range(0, min(len(inputs), batches * batch_size), batch_size):
        model(inputs[i : i + batch_size])
        seen += 1
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return seen


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    stopped_early: bool = False


def fit(
    model: nn.Module,
    train: TensorDataset,
    val: TensorDataset,
    cfg: TrainLoopConfig,
    *,
    loss_fn: LossFn = cross_entropy,
    seed: int = 0,
    label: str = "train",
    where: str = "train",
    on_epoch_start: Callable[[int], None] | None = None,
) -> FitResult:
    """Train with early stopping on validation accuracy; the best state is restored at the end.

    ``where`` names the config location in error messages (e.g. ``stages[3].finetune``).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_train, y_train = train.tensors
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = build_schedule(optimizer, cfg.schedule, steps_per_epoch, cfg.epochs)
    result = FitResult(best_val_accuracy=-1.0)
    best_state = None
    since_best = 0
    with progress_bar() as bar:
        task = bar.add_task(label, total=cfg.epochs * steps_per_epoch)
        for epoch in range(cfg.epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            set_mode(model, True)
            order = torch.randperm(len(x_train), generator=generator)
            total_loss = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, x_train[idx], y_train[idx])
                if not torch.isfinite(loss):
                    raise UserError(
                        f"{where}: training diverged (loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}); "
                        f"lower optimizer.lr (now {cfg.optimizer.lr})"
                    )
                loss.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                schedule.step()
                total_loss += loss.item()
                bar.advance(task)
            val_acc, val_loss = evaluate(model, val)
            result.history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": total_loss / steps_per_epoch,
                    "val_accuracy": val_acc,
                    "val_loss": val_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
            bar.update(task, description=f"{label} · epoch {epoch + 1}/{cfg.epochs} · val acc {val_acc:.4f}")
            if val_acc > result.best_val_accuracy:
                result.best_val_accuracy, result.best_epoch, since_best = val_acc, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if cfg.patience is not None and since_best >= cfg.patience:
                    result.stopped_early = True
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    set_mode(model, False)
    return result
