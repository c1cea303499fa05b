"""Optimizers and learning-rate schedules for the training engine.

Every parameter tensor gets its own optimizer parameter group, so its learning rate can be
scaled by its importance and by its depth; torch's own optimizers do the updates. Schedules
are per-step multipliers applied on top of each group's initial rate.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from edgeslim.config.schema import StrictModel
from edgeslim.train.importance import ParamCriterion, aggregate_by_layer, layer_of


class OptimizerConfig(StrictModel):
    name: Literal["adamw", "adam", "sgd", "rmsprop", "adagrad"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    decoupled_weight_decay: bool = Field(
        True, description="AdamW-style decay for adam/adamw; sgd, rmsprop and adagrad only have L2 decay"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop")
    nesterov: bool = False
    decay_norms_and_biases: bool = Field(False, description="apply weight decay to norm weights and biases too")


class ScheduleConfig(StrictModel):
    name: Literal["constant", "cosine", "linear", "step", "exponential", "plateau"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0 before the schedule")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine/linear floor as a fraction of lr")
    step_epochs: int = Field(1, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step/exponential/plateau decay factor")
    plateau_patience: int = Field(1, ge=1, description="plateau: epochs without val improvement before decaying")


class ImportanceLRConfig(StrictModel):
    """``lr_i = lr * clip(f(importance_i / mean importance), min_scale, max_scale)`` (boost) or ``1/f`` (protect)."""

    criterion: ParamCriterion = "fisher"
    granularity: Literal["tensor", "layer"] = "layer"
    map: Literal["linear", "sqrt", "log"] = "sqrt"
    direction: Literal["boost", "protect"] = "boost"
    min_scale: float = Field(0.5, gt=0)
    max_scale: float = Field(2.0, gt=0)
    layers: list[str] = Field(default_factory=lambda: ["*"], description="layer name patterns it applies to")
    calibration_samples: int = Field(256, ge=1)
    hutchinson_samples: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _range(self) -> ImportanceLRConfig:
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale}) must be <= max_scale ({self.max_scale})")
        return self


def importance_map(score: float, kind: str) -> float:
    """Monotone map of a normalised score (1.0 = average importance) with f(1) = 1."""
    if kind == "linear":
        return score
    if kind == "sqrt":
        return math.sqrt(score)
    return math.log1p(score) / math.log(2.0)


def importance_scales(scores: dict[str, float], cfg: ImportanceLRConfig, param_names: list[str]) -> dict[str, float]:
    """LR multiplier per parameter name (1.0 for parameters outside ``cfg.layers``)."""
    if cfg.granularity == "layer":
        per_layer = aggregate_by_layer({n: abs(scores.get(n, 0.0)) for n in param_names})
        raw = {n: per_layer[layer_of(n)] for n in param_names}
    else:
        raw = {n: abs(scores.get(n, 0.0)) for n in param_names}
    chosen = [n for n in param_names if any(fnmatch.fnmatchcase(layer_of(n), pat) for pat in cfg.layers)]
    units = {layer_of(n) if cfg.granularity == "layer" else n: raw[n] for n in chosen}
    mean = sum(units.values()) / len(units) if units else 0.0
    scales = dict.fromkeys(param_names, 1.0)
    if mean <= 0:
        return scales
    for n in chosen:
        f = importance_map(raw[n] / mean, cfg.map)
        value = f if cfg.direction == "boost" else (1.0 / f if f > 0 else cfg.max_scale)
        scales[n] = min(cfg.max_scale, max(cfg.min_scale, value))
    return scales


_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks|block|h)\.(\d+)\.")


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Depth from the top per layer, the head being 0. In a transformer (numbered blocks such as
    ``encoder.layer.N`` or ``blocks.N``) a whole block is one depth: the head (what follows the last
    block) is 0, block N-1 is 1, ..., block 0 is N, and what precedes the blocks (embeddings) N+1, so
    layer-wise decay scales by block as in BERT fine-tuning. Otherwise every parameterised module is
    one depth, the last one (the head) 0."""
    layers: list[str] = []
    for name, _ in model.named_parameters():
        if layer_of(name) not in layers:
            layers.append(layer_of(name))
    blocks = {layer: int(m.group(1)) for layer in layers if (m := _BLOCK.search(layer + "."))}
    if len(set(blocks.values())) < 2:
        return {layer: len(layers) - 1 - i for i, layer in enumerate(layers)}
    last, first = max(blocks.values()), min(blocks.values())
    index = {layer: i for i, layer in enumerate(layers)}
    first_at = min(index[layer] for layer in blocks)
    depths = {}
    for layer in layers:
        if layer in blocks:
            depths[layer] = last - blocks[layer] + 1
        else:  # before the blocks: embeddings (deepest); after them: the head
            depths[layer] = last - first + 2 if index[layer] < first_at else 0
    return depths


def build_param_groups(
    model: nn.Module,
    cfg: OptimizerConfig,
    importance: dict[str, float] | None = None,
    layer_decay: float | None = None,
    extra: dict[str, nn.Parameter] | None = None,
) -> list[dict]:
    """One group per tensor: ``lr = base * importance scale * layer_decay ** depth``; no decay on norms/biases."""
    named = list(model.named_parameters())
    depths = layer_depths(model)
    scales = importance or {}
    groups = []
    for name, param in named + list((extra or {}).items()):
        plain = param.dim() <= 1 or name.endswith(".bias")
        decay = cfg.weight_decay if (cfg.decay_norms_and_biases or not plain) else 0.0
        lr = cfg.lr * scales.get(name, 1.0)
        if layer_decay is not None and name in dict(named):
            lr *= layer_decay ** depths[layer_of(name)]
        groups.append({"params": [param], "lr": lr, "weight_decay": decay, "name": name})
    return groups


def build_optimizer(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, decoupled_weight_decay=cfg.decoupled_weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adagrad(groups, lr=cfg.lr)


def lr_multiplier(cfg: ScheduleConfig, epoch: int, step: int, steps_in_epoch: int, total_epochs: int) -> float:
    """LR factor for update ``step`` of ``epoch`` (both 0-based): linear warm-up, then the schedule."""
    t = epoch + step / steps_in_epoch
    warmup = cfg.warmup_epochs
    if t < warmup:
        return (t + 1 / steps_in_epoch) / warmup
    if cfg.name in ("constant", "plateau"):
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** (epoch // cfg.step_epochs)
    if cfg.name == "exponential":
        return cfg.gamma ** (t - warmup)
    span = max(total_epochs - warmup, 1e-9)
    progress = min((t - warmup) / span, 1.0)
    if cfg.name == "linear":  # BERT's get_linear_schedule_with_warmup
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - progress)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Plateau:
    """Reduce-on-plateau factor on the validation metric (higher is better)."""

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        self.factor = 1.0
        self.best = -math.inf
        self.bad_epochs = 0

    def update(self, metric: float) -> None:
        if self.cfg.name != "plateau":
            return
        if metric > self.best:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.cfg.plateau_patience:
            self.factor *= self.cfg.gamma
            self.bad_epochs = 0
