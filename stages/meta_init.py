"""``meta_init``: meta-learn the (compressed) model's initialization so it adapts in a few steps.

Runs after ``prune`` and before ``finetune``: first-order MAML or Reptile (``edgeslim.train.meta``)
over N-way K-shot episodes from the training split's classes minus ``held_out_classes``. Then the
adaptation check: on episodes of the held-out classes only (never seen in meta-training), the query
accuracy after k steps of SGD from the input model and from the meta-learned one, same episodes,
steps and learning rate. The report carries the meta-training curve and both accuracies per k.
Off unless a config adds it: ``docs/meta_init.md`` says whether it helps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, model_validator

from edgeslim.config.schema import StrictModel
from edgeslim.engine.progress import progress_bar
from edgeslim.engine.stage import Stage, StageContext, StageResult, save_same_architecture
from edgeslim.engine.store import TORCH
from edgeslim.errors import UserError
from edgeslim.models.loader import output_layer_name
from edgeslim.train.meta import (
    EpisodeSampler,
    Functional,
    MetaSettings,
    adaptation_accuracy,
    held_out_split,
    meta_train,
)

__all__ = ["MetaInit", "MetaInitConfig"]


class MetaInitConfig(StrictModel):
    """Defaults: the settings docs/meta_init.md measured (pruned edge_cnn, MNIST)."""

    algorithm: Literal["reptile", "fomaml"] = "reptile"
    ways: int = Field(5, ge=2, description="N: classes per episode")
    shots: int = Field(5, ge=1, description="K: support samples per class")
    query: int = Field(15, ge=1, description="query samples per class")
    held_out_classes: int | list[int] = Field(
        3, description="classes kept out of meta-training for the adaptation check: a count (the highest) or a list"
    )
    inner_steps: int = Field(3, ge=1, le=1000)
    inner_lr: float = Field(0.01, gt=0)
    outer_optimizer: Literal["adam", "sgd"] | None = Field(
        None, description="default: sgd for reptile (its meta-step ε = outer_lr), adam for fomaml"
    )
    outer_lr: float | None = Field(None, gt=0, description="default: 0.1 for reptile, 1e-4 for fomaml")
    meta_batch: int = Field(2, ge=1, description="tasks per meta-update")
    iterations: int = Field(100, ge=1, le=1_000_000)
    head: Literal["zero", "reindex"] = Field(
        "zero", description="episode head: a fresh zero N-way head, or the model's own rows of the episode's classes"
    )
    adapt_steps: list[int] = Field(default_factory=lambda: [1, 5, 20], description="k of the adaptation check")
    adapt_lr: float | None = Field(None, gt=0, description="default: inner_lr")
    eval_tasks: int = Field(20, ge=1, description="held-out episodes in the adaptation check")

    @model_validator(mode="after")
    def _check(self) -> MetaInitConfig:
        if not self.adapt_steps or min(self.adapt_steps) < 1:
            raise ValueError("adapt_steps: give at least one k >= 1")
        if isinstance(self.held_out_classes, int) and self.held_out_classes < 2:
            raise ValueError("held_out_classes: at least 2")
        return self


class MetaInit(Stage[MetaInitConfig]):
    name = "meta_init"
    accepts = (TORCH,)

    def run(self, ctx: StageContext, cfg: MetaInitConfig) -> StageResult:
        model = ctx.models.load(ctx.input)
        train = ctx.data.train
        labels = train.labels
        if labels.dtype.is_floating_point:
            raise UserError(f"{ctx.where}: episodes need class labels (the data's labels are not integers)")
        meta_classes, held_out = held_out_split(labels.unique().tolist(), cfg.held_out_classes, ctx.where)
        head = output_layer_name(model, ctx.example())
        f = Functional.of(model, head)
        seed = ctx.seed
        ways_eval = min(cfg.ways, len(held_out))
        check = {"ways": ways_eval, "shots": cfg.shots, "query": cfg.query, "seed": seed + 1, "where": ctx.where}

        def check_accuracy(params: dict[str, torch.Tensor]) -> dict[int, list[float]]:
            sampler = EpisodeSampler(labels, held_out, **check)  # the same episodes before and after
            lr = cfg.adapt_lr or cfg.inner_lr
            return adaptation_accuracy(f, params, train, sampler, cfg.adapt_steps, lr, cfg.eval_tasks, cfg.head)

        before = check_accuracy(f.params())
        sampler = EpisodeSampler(labels, meta_classes, cfg.ways, cfg.shots, cfg.query, seed, ctx.where)
        settings = MetaSettings(cfg.algorithm, cfg.inner_steps, cfg.inner_lr, cfg.meta_batch, cfg.iterations, cfg.head)
        torch.manual_seed(seed)
        started = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task(f"meta_init ({cfg.algorithm})", total=cfg.iterations)
            history = meta_train(f, train, sampler, settings, self._optimizer(cfg), lambda: bar.advance(task))
        meta_s = time.perf_counter() - started
        after = check_accuracy(f.params())
        artifact = save_same_architecture(ctx, model)
        summary = {
            str(k): {
                "without": statistics.mean(before[k]),
                "with": statistics.mean(after[k]),
                "without_sd": statistics.pstdev(before[k]),
                "with_sd": statistics.pstdev(after[k]),
            }
            for k in cfg.adapt_steps
        }
        k_mid = sorted(cfg.adapt_steps)[len(cfg.adapt_steps) // 2]
        notes = [
            f"{cfg.algorithm}: {cfg.ways}-way {cfg.shots}-shot episodes from classes {meta_classes}, {cfg.iterations} "
            f"meta-iterations of {cfg.meta_batch} tasks ({meta_s:.0f} s); query loss {history[0]:.3f} → "
            f"{history[-1]:.3f}",
            f"adaptation on held-out classes {held_out} ({ways_eval}-way {cfg.shots}-shot, {cfg.eval_tasks} episodes, "
            f"{k_mid} steps): {summary[str(k_mid)]['without'] * 100:.1f}% without meta-init → "
            f"{summary[str(k_mid)]['with'] * 100:.1f}% with",
        ]
        details = {
            "algorithm": cfg.algorithm,
            "meta_classes": meta_classes,
            "held_out_classes": held_out,
            "meta_train_s": round(meta_s, 2),
            "meta_loss": history,
            "adaptation": summary,
        }
        return StageResult(artifact, details=details, notes=notes)

    @staticmethod
    def _optimizer(cfg: MetaInitConfig) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
        """The outer optimizer. Defaults from a digits trial (docs/meta_init.md): Reptile's plain meta-step
        θ += ε(φ - θ) with ε = 0.1, FOMAML with Adam at 1e-4; larger steps (ε 0.5, Adam 1e-3) fitted the
        meta-training classes better and adapted to held-out classes worse than no meta-init at all."""
        name = cfg.outer_optimizer or ("sgd" if cfg.algorithm == "reptile" else "adam")
        lr = cfg.outer_lr or (0.1 if cfg.algorithm == "reptile" else 1e-4)

        def build(params: list[torch.Tensor]) -> torch.optim.Optimizer:
            return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.Adam(params, lr=lr)

        return build
