"""Meta-learned initialization: first-order MAML and Reptile over N-way K-shot episodes.

The model is used as a pure function of a parameter dict (``torch.func.functional_call``), so an
inner loop adapts a *copy* of the parameters by plain SGD (``torch.func.grad``) and the model's own
tensors change only at the outer step:

* **first-order MAML** (Finn et al. 2017, FOMAML): adapt on the support set, then the task's
  meta-gradient is the query loss's gradient at the adapted parameters;
* **Reptile** (Nichol et al. 2018): adapt on the whole episode; the meta-gradient is
  ``θ - φ`` (stepping against it moves θ toward the adapted φ).

The outer optimizer (Adam, SGD, …) takes the meta-batch's mean meta-gradient as ``.grad``.

Episodes (:class:`EpisodeSampler`) draw N classes, then K support and Q query samples per class,
relabelled ``0..N-1``. The classifier head of the episode is either **zero** (a fresh N-way head of
zeros on the model's features, the head rows never meta-learned: the body learns to be quick to
fit a new head) or **reindex** (the model's own head rows of the episode's classes, meta-learned
with the body). The model runs in eval mode: BatchNorm uses its running statistics and dropout is
off, so a task's loss is a pure function of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from edgeslim.data.batches import Inputs, Split, concat
from edgeslim.errors import UserError

Params = dict[str, torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> scalar
Algorithm = Literal["reptile", "fomaml"]
HeadMode = Literal["zero", "reindex"]


# ---- episodes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """One task: ``classes[i]`` is the data's label of episode class ``i``; sample indices of the split."""

    classes: tuple[int, ...]
    support: torch.Tensor
    query: torch.Tensor


class EpisodeSampler:
    """N-way K-shot episodes from the samples of ``classes`` only (seeded)."""

    def __init__(
        self, labels: torch.Tensor, classes: Sequence[int], ways: int, shots: int, query: int, seed: int, where: str
    ):
        self.classes = sorted(int(c) for c in classes)
        self.ways, self.shots, self.query = ways, shots, query
        if ways > len(self.classes):
            raise UserError(f"{where}: {ways}-way episodes need {ways} classes; these have {len(self.classes)}")
        self.by_class = {c: (labels == c).nonzero().flatten() for c in self.classes}
        short = {c: len(i) for c, i in self.by_class.items() if len(i) < shots + query}
        if short:
            raise UserError(
                f"{where}: an episode takes {shots} support + {query} query samples per class; "
                f"classes {sorted(short)} have only {min(short.values())}"
            )
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> Episode:
        g = self.generator
        picked = [self.classes[int(i)] for i in torch.randperm(len(self.classes), generator=g)[: self.ways]]
        support, query = [], []
        for c in picked:
            idx = self.by_class[c][torch.randperm(len(self.by_class[c]), generator=g)]
            support.append(idx[: self.shots])
            query.append(idx[self.shots : self.shots + self.query])
        return Episode(tuple(picked), torch.cat(support), torch.cat(query))


def episode_data(split: Split, episode: Episode, which: Literal["support", "query"]) -> tuple[Inputs, torch.Tensor]:
    """The episode's samples with labels ``0..N-1`` in the order of ``episode.classes``."""
    x, y = split.take(getattr(episode, which))
    remap = {c: i for i, c in enumerate(episode.classes)}
    return x, torch.tensor([remap[int(v)] for v in y])


def held_out_split(classes: Sequence[int], held_out: int | Sequence[int], where: str) -> tuple[list[int], list[int]]:
    """(meta-training classes, held-out classes): ``held_out`` names them, or counts the highest."""
    ordered = sorted(int(c) for c in classes)
    chosen = ordered[len(ordered) - held_out :] if isinstance(held_out, int) else sorted(set(held_out))
    unknown = sorted(set(chosen) - set(ordered))
    if unknown:
        raise UserError(f"{where}.held_out_classes: {unknown} are not classes of the data ({ordered})")
    rest = [c for c in ordered if c not in chosen]
    if len(chosen) < 2 or len(rest) < 2:
        raise UserError(f"{where}.held_out_classes: need at least 2 held-out and 2 meta-training classes")
    return rest, chosen


# ---- the functional model -----------------------------------------------------------------------


@dataclass
class Functional:
    """A model as a function of its parameters; ``head`` names the output layer's weight and bias."""

    model: nn.Module
    buffers: Params
    head: tuple[str, str | None]
    loss: Loss = F.cross_entropy

    @classmethod
    def of(cls, model: nn.Module, head_layer: str, loss: Loss = F.cross_entropy) -> Functional:
        model.eval()
        module = model.get_submodule(head_layer)
        if not isinstance(module, nn.Linear):
            raise UserError(f"meta_init: the output layer {head_layer} is a {type(module).__name__}, not a Linear")
        bias = f"{head_layer}.bias" if module.bias is not None else None
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        return cls(model, buffers, (f"{head_layer}.weight", bias), loss)

    def params(self) -> Params:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def __call__(self, params: Params, x: Inputs) -> torch.Tensor:
        if isinstance(x, dict):
            return functional_call(self.model, (params, self.buffers), (), x)
        return functional_call(self.model, (params, self.buffers), (x,))

    def task_loss(self, params: Params, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self(params, x), y)

    def episode_params(self, params: Params, episode: Episode, mode: HeadMode) -> Params:
        """``params`` with the head the episode's N classes use (see the module docstring)."""
        weight, bias = self.head
        out = dict(params)
        rows = torch.tensor(episode.classes)
        if mode == "zero":
            out[weight] = torch.zeros(len(rows), params[weight].shape[1])
            if bias is not None:
                out[bias] = torch.zeros(len(rows))
        else:
            out[weight] = params[weight][rows]
            if bias is not None:
                out[bias] = params[bias][rows]
        return out

    def full_gradient(self, meta: Params, params: Params, episode: Episode, mode: HeadMode) -> Params:
        """An episode's meta-gradient on the model's own parameters: reindexed head rows scatter back
        to their classes; a zero head is the episode's own and gets none."""
        weight, bias = self.head
        out = {n: g for n, g in meta.items() if n not in (weight, bias)}
        for name in (weight, bias):
            if name is None:
                continue
            full = torch.zeros_like(params[name])
            if mode == "reindex":
                full[torch.tensor(episode.classes)] = meta[name]
            out[name] = full
        return out


def adapt(f: Functional, params: Params, x: Inputs, y: torch.Tensor, steps: int, lr: float) -> Params:
    """``steps`` of plain SGD on one batch, on a copy of ``params`` (first order: no graph kept)."""
    step = grad(f.task_loss)
    for _ in range(steps):
        g = step(params, x, y)
        params = {n: p - lr * g[n] for n, p in params.items()}
    return params


def task_gradient(
    f: Functional,
    params: Params,
    support: tuple[Inputs, torch.Tensor],
    query: tuple[Inputs, torch.Tensor],
    algorithm: Algorithm,
    steps: int,
    lr: float,
) -> tuple[Params, float]:
    """One task's meta-gradient at ``params`` (see the module docstring) and its query loss after adaptation."""
    if algorithm == "fomaml":
        adapted = adapt(f, params, *support, steps, lr)
        loss = f.task_loss(adapted, *query)
        return grad(f.task_loss)(adapted, *query), float(loss)
    x = concat([support[0], query[0]])
    adapted = adapt(f, params, x, torch.cat([support[1], query[1]]), steps, lr)
    return {n: params[n] - adapted[n] for n in params}, float(f.task_loss(adapted, *query))


# ---- meta-training and the adaptation check -----------------------------------------------------------


@dataclass
class MetaSettings:
    algorithm: Algorithm
    inner_steps: int
    inner_lr: float
    meta_batch: int
    iterations: int
    head: HeadMode


def meta_train(
    f: Functional,
    split: Split,
    sampler: EpisodeSampler,
    settings: MetaSettings,
    optimizer_factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    advance: Callable[[], None] = lambda: None,
) -> list[float]:
    """Meta-train ``f.model`` in place; returns the mean post-adaptation query loss per iteration."""
    theta = {n: p for n, p in f.model.named_parameters()}
    optimizer = optimizer_factory(list(theta.values()))
    history = []
    for _ in range(settings.iterations):
        params = {n: p.detach() for n, p in theta.items()}
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        losses = []
        for _ in range(settings.meta_batch):
            episode = sampler.sample()
            local = f.episode_params(params, episode, settings.head)
            meta, loss = task_gradient(
                f,
                local,
                episode_data(split, episode, "support"),
                episode_data(split, episode, "query"),
                settings.algorithm,
                settings.inner_steps,
                settings.inner_lr,
            )
            for n, g in f.full_gradient(meta, params, episode, settings.head).items():
                total[n] += g
            losses.append(loss)
        optimizer.zero_grad(set_to_none=True)
        for n, p in theta.items():
            p.grad = total[n] / settings.meta_batch
        optimizer.step()
        history.append(sum(losses) / len(losses))
        advance()
    return history


@torch.no_grad()
def _accuracy(f: Functional, params: Params, x: Inputs, y: torch.Tensor) -> float:
    return float((f(params, x).argmax(1) == y).float().mean())


def adaptation_accuracy(
    f: Functional,
    params: Params,
    split: Split,
    sampler: EpisodeSampler,
    steps: Sequence[int],
    lr: float,
    tasks: int,
    head: HeadMode,
) -> dict[int, list[float]]:
    """Query accuracy after k steps of SGD on the support set, for each k in ``steps``, per task."""
    out: dict[int, list[float]] = {k: [] for k in steps}
    for _ in range(tasks):
        episode = sampler.sample()
        support, query = episode_data(split, episode, "support"), episode_data(split, episode, "query")
        p, done = f.episode_params(params, episode, head), 0
        for k in sorted(steps):
            p = adapt(f, p, *support, k - done, lr)
            done = k
            out[k].append(_accuracy(f, p, *query))
    return out


__all__ = [
    "Episode",
    "EpisodeSampler",
    "Functional",
    "MetaSettings",
    "adapt",
    "adaptation_accuracy",
    "episode_data",
    "held_out_split",
    "meta_train",
    "task_gradient",
]
