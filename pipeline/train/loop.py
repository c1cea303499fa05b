"""The training engine shared by the ``train`` and ``finetune`` stages.

``fit`` runs epochs with the pieces from ``optim`` (per-tensor learning rates, schedules),
``losses`` and ``augment``, plus freezing, gradual unfreezing, a batch-size schedule,
BatchNorm freezing, early stopping with the best state restored and NaN detection.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import TensorDataset

from edgeslim.config.schema import StrictModel
from edgeslim.data.augment import AugmentConfig, SynonymTable, augment_inputs, build_synonym_table, check_augment
from edgeslim.data.batches import (
    Inputs,
    ShardSplit,
    Split,
    as_split,
    call,
    count,
    fitted,
    seen_tokens,
    select,
)
from edgeslim.engine import distributed
from edgeslim.engine.progress import progress_bar
from edgeslim.errors import UserError
from edgeslim.quant.qat import is_graph_module, observers_paused, set_mode
from edgeslim.train.importance import layer_of
from edgeslim.train.losses import LossConfig, LossFn, compose_loss
from edgeslim.train.optim import (
    OptimizerConfig,
    Plateau,
    ScheduleConfig,
    build_optimizer,
    build_param_groups,
    layer_depths,
    lr_multiplier,
)

__all__ = ["FitResult", "OptimizerConfig", "ScheduleConfig", "TrainLoopConfig", "evaluate", "fit", "predict"]


class TrainLoopConfig(StrictModel):
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(128, ge=1)
    batch_size_schedule: dict[int, int] | None = Field(
        None, description="{first epoch (1-based): batch size}, e.g. {1: 256, 3: 64}"
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    layer_decay: float | None = Field(None, gt=0, le=1, description="lr * decay ** (depth from the top)")
    freeze: list[str] = Field(default_factory=list, description="parameter name patterns to keep fixed")
    freeze_first_layers: int = Field(0, ge=0, description="keep the k lowest parameterised layers fixed")
    unfreeze_every: int | None = Field(
        None, ge=1, description="gradual unfreezing: start with the head, add one layer every N epochs"
    )
    loss: LossConfig = Field(default_factory=LossConfig)
    dropout: float | None = Field(None, ge=0, lt=1, description="override every Dropout's p")
    augment: AugmentConfig | None = None
    freeze_bn_last_epochs: int = Field(0, ge=0, description="use running BatchNorm statistics in the last k epochs")
    patience: int | None = Field(3, ge=1, description="early stopping: epochs without val improvement")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")

    @field_validator("batch_size_schedule")
    @classmethod
    def _schedule(cls, value: dict[int, int] | None) -> dict[int, int] | None:
        if value is not None and any(k < 1 or v < 1 for k, v in value.items()):
            raise ValueError("epochs are 1-based and batch sizes must be >= 1")
        return value

    def batch_size_at(self, epoch: int) -> int:
        """Batch size for 0-based ``epoch``."""
        size = self.batch_size
        for start, value in sorted((self.batch_size_schedule or {}).items()):
            if epoch + 1 >= start:
                size = value
        return size


def set_dropout(model: nn.Module, p: float) -> int:
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in dropouts:
        m.p = p
    return len(dropouts)


def frozen_names(model: nn.Module, cfg: TrainLoopConfig, epoch: int) -> set[str]:
    """Parameters that must not change in ``epoch`` (patterns, lowest layers, gradual unfreezing)."""
    depths = layer_depths(model)
    bottom_up = sorted(depths, key=depths.get, reverse=True)
    fixed_layers = set(bottom_up[: cfg.freeze_first_layers])
    frozen = set()
    for name, _ in model.named_parameters():
        layer = layer_of(name)
        if (
            any(fnmatch.fnmatchcase(name, pat) for pat in cfg.freeze)
            or layer in fixed_layers
            or (cfg.unfreeze_every is not None and depths[layer] >= 1 + epoch // cfg.unfreeze_every)
        ):
            frozen.add(name)
    return frozen


def train_mode(model: nn.Module, freeze_bn: bool) -> None:
    set_mode(model, True)
    if not freeze_bn:
        return
    if is_graph_module(model):  # an exported graph switches BatchNorm (and dropout) as a whole
        set_mode(model, False)
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def predict(model: nn.Module, inputs: Inputs | Split, batch_size: int = 512) -> torch.Tensor:
    """The model's outputs on a batch of inputs or on a whole split (read batch by batch)."""
    set_mode(model, False)
    with observers_paused(model):
        if isinstance(inputs, Split):
            return torch.cat([call(model, fitted(model, x)) for x, _ in inputs.batches(batch_size)])
        n = count(inputs)
        return torch.cat(
            [call(model, fitted(model, select(inputs, slice(i, i + batch_size)))) for i in range(0, n, batch_size)]
        )


def evaluate(model: nn.Module, data: Split | TensorDataset, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a PyTorch model on a split."""
    split = as_split(data)
    logits = predict(model, split, batch_size)
    y = split.labels
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


@torch.no_grad()
def evaluate_together(model: nn.Module, split: Split, batch_size: int = 512) -> tuple[float, float]:
    """:func:`evaluate` with the ranks of a distributed run each taking a shard: the same two numbers
    on every rank (so every rank makes the same early-stopping decision), in 1/N of the time."""
    world = distributed.current()
    if world.size == 1:
        return evaluate(model, split, batch_size)
    set_mode(model, False)
    correct = loss_sum = seen = 0.0
    with observers_paused(model):
        for x, y in ShardSplit(split, world.rank, world.size, pad=False).batches(batch_size):
            logits = call(model, fitted(model, x))
            correct += float((logits.argmax(1) == y).sum())
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            seen += len(y)
    correct, loss_sum, seen = distributed.sums([correct, loss_sum, seen])
    return correct / seen, loss_sum / seen


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Split | Inputs, batches: int, batch_size: int) -> int:
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
    split = data if isinstance(data, Split) else None
    chunks = (
        (x for x, _ in split.batches(batch_size))
        if split is not None
        else (select(data, slice(i, i + batch_size)) for i in range(0, count(data), batch_size))  # type: ignore[arg-type]
    )
    for x in chunks:
        if seen == batches:
            break
        call(model, x)
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
    initial_lrs: dict[str, float] = field(default_factory=dict)


@dataclass
class _EpochLoop:
    """One epoch of optimizer steps: schedule, augmentation, loss, divergence check, clipping."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    initial_lrs: list[float]
    loss_fn: LossFn
    cfg: TrainLoopConfig
    generator: torch.Generator
    where: str
    synonyms: SynonymTable | None = None
    extra: list[nn.Parameter] = field(default_factory=list)  # trained beside the model (not in DDP's care)
    plateau: Plateau = field(init=False)

    def __post_init__(self) -> None:
        self.plateau = Plateau(self.cfg.schedule)

    def run_epoch(self, epoch: int, train: Split, steps: int, advance: Callable[[], None], net: nn.Module) -> float:
        """Train on one shuffled pass over ``train`` (a stream in its own order; in a distributed run,
        this rank's shard of it); returns the mean training loss. ``net`` is what the loss calls: the
        model, or the model wrapped in ``DistributedDataParallel``."""
        cfg, optimizer = self.cfg, self.optimizer
        batch_size = rank_batch_size(cfg.batch_size_at(epoch), self.where)
        order = torch.randperm(len(train), generator=self.generator)
        total_loss = 0.0
        done = 0
        for step, (x, y) in zip(range(steps), train.batches(batch_size, order), strict=False):
            factor = lr_multiplier(cfg.schedule, epoch, step, steps, cfg.epochs) * self.plateau.factor
            for group, lr in zip(optimizer.param_groups, self.initial_lrs, strict=True):
                group["lr"] = lr * factor
            if cfg.augment is not None:
                x = augment_inputs(x, cfg.augment, self.generator, self.synonyms)
            x = fitted(net, x)
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(net, x, y)
            seen = distributed.mean(loss.detach())  # every rank decides on the same number
            if not torch.isfinite(seen):
                raise UserError(
                    f"{self.where}: training diverged (loss is {seen.item()} at epoch {epoch + 1}, step {step + 1}); "
                    f"lower optimizer.lr (now {cfg.optimizer.lr})"
                )
            loss.backward()
            distributed.average_gradients(self.extra)
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
            optimizer.step()
            total_loss += seen.item()
            done += 1
            advance()
        return total_loss / max(done, 1)


def rank_batch_size(batch_size: int, where: str) -> int:
    """Each rank's batch in a distributed run: the config's batch size is the global batch (so the
    learning rate means what it says); it must split evenly over the processes."""
    world = distributed.current().size
    if batch_size % world:
        raise UserError(
            f"{where}.batch_size: {batch_size} does not split evenly over {world} processes (it is the global "
            f"batch; each process takes batch_size / {world}): use a multiple of {world}"
        )
    return batch_size // world


# Who is told each epoch's validation accuracy: (label of the fit, e.g. "finetune", epoch, accuracy).
# A search uses it to stop a trial whose curve is clearly worse (raising out of the fit); nothing else does.
EpochWatcher = Callable[[str, int, float], None]
_epoch_watchers: contextvars.ContextVar[tuple[EpochWatcher, ...]] = contextvars.ContextVar("epoch_watchers", default=())


@contextlib.contextmanager
def watch_epochs(watcher: EpochWatcher) -> Iterator[None]:
    """Call ``watcher(label, epoch, val_accuracy)`` after every epoch of every ``fit`` inside the block."""
    token = _epoch_watchers.set((*_epoch_watchers.get(), watcher))
    try:
        yield
    finally:
        _epoch_watchers.reset(token)


def fit(
    model: nn.Module,
    train: Split | TensorDataset,
    val: Split | TensorDataset,
    cfg: TrainLoopConfig,
    *,
    loss_fn: LossFn | None = None,
    lr_scales: dict[str, float] | None = None,
    extra_params: dict[str, nn.Parameter] | None = None,
    seed: int = 0,
    label: str = "train",
    where: str = "train",
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    tokenizer: Path | None = None,
) -> FitResult:
    """Train with early stopping on validation accuracy; the best state is restored at the end.

    ``lr_scales`` multiplies each parameter's learning rate (importance scaling);
    ``extra_params`` are trained too but are not part of the model (e.g. hint adapters).
    ``where`` names the config location in error messages (e.g. ``stages[3].finetune``);
    ``tokenizer``: the folder of the tokenizer the text data came from (synonym augmentation).
    """
    train, val = as_split(train), as_split(val)
    synonyms = None
    if cfg.augment is not None:
        check_augment(cfg.augment, train.head(1), f"{where}.augment")
        if cfg.augment.token_synonym:
            if tokenizer is None:
                raise UserError(
                    f"{where}.augment.token_synonym: needs text the pipeline tokenized (data.name "
                    "rotten_tomatoes or text_csv): the synonyms are looked up in its tokenizer"
                )
            synonyms = build_synonym_table(cfg.augment, tokenizer, seen_tokens(train), f"{where}.augment")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loss_fn = loss_fn or compose_loss(cfg.loss)
    if cfg.dropout is not None and not is_graph_module(model):
        set_dropout(model, cfg.dropout)
    groups = build_param_groups(model, cfg.optimizer, lr_scales, cfg.layer_decay, extra_params)
    optimizer = build_optimizer(groups, cfg.optimizer)
    loop = _EpochLoop(
        model,
        optimizer,
        [g["lr"] for g in optimizer.param_groups],
        loss_fn,
        cfg,
        generator,
        where,
        synonyms,
        list((extra_params or {}).values()),
    )
    result = FitResult(best_val_accuracy=-1.0, initial_lrs={g["name"]: g["lr"] for g in optimizer.param_groups})
    params = dict(model.named_parameters())
    best_state = None
    since_best = 0
    world = distributed.current()
    if world.size > 1:  # data-parallel: this rank's shard, DistributedSampler-style, seeded alike on every rank
        train = ShardSplit(train, world.rank, world.size)
    steps = [train.steps(rank_batch_size(cfg.batch_size_at(e), where)) for e in range(cfg.epochs)]
    with progress_bar() as bar:
        task = bar.add_task(label, total=sum(steps))
        for epoch in range(cfg.epochs):
            frozen = frozen_names(model, cfg, epoch)
            for name, p in params.items():
                p.requires_grad_(name not in frozen)
            train_mode(model, freeze_bn=epoch >= cfg.epochs - cfg.freeze_bn_last_epochs)
            net = distributed.data_parallel(model)  # per epoch: the trainable set may have changed
            train_loss = loop.run_epoch(epoch, train, steps[epoch], lambda: bar.advance(task), net)
            val_acc, val_loss = evaluate_together(model, val)
            loop.plateau.update(val_acc)
            result.history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "val_accuracy": val_acc,
                    "val_loss": val_loss,
                    "lr": optimizer.param_groups[-1]["lr"],
                    "batch_size": cfg.batch_size_at(epoch),
                    "frozen_tensors": len(frozen),
                }
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
            for watcher in _epoch_watchers.get():
                watcher(label, epoch, val_acc)
            bar.update(task, description=f"{label} · epoch {epoch + 1}/{cfg.epochs} · val acc {val_acc:.4f}")
            if val_acc > result.best_val_accuracy:
                result.best_val_accuracy, result.best_epoch, since_best = val_acc, epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if cfg.patience is not None and since_best >= cfg.patience:
                    result.stopped_early = True
                    break
    for p in params.values():
        p.requires_grad_(True)
    if best_state is not None:
        model.load_state_dict(best_state)
    set_mode(model, False)
    return result
