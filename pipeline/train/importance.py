"""Per-parameter importance scores, used by fine-tuning to scale learning rates.

The Fisher criterion (``FisherDiagonal``) is the same quantity the ``hessian`` pruning
criterion uses (``edgeslim.prune.criteria``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from edgeslim.data.batches import Inputs, call, count, select
from edgeslim.engine import distributed


class FisherDiagonal:
    """Running mean of per-sample squared gradients, per parameter name."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.vmap = True  # False once the model turned out not to be vmappable

    def add(self, model: nn.Module, inputs: Inputs, labels: torch.Tensor, chunk: int = 32) -> None:
        """Add the squared per-sample gradients of the cross-entropy loss for every sample.

        ``vmap`` computes a chunk of per-sample gradients in one pass; models whose forward has
        data-dependent control flow (Hugging Face attention checks whether the mask is all ones)
        cannot be vmapped, and fall back to one backward pass per sample: same numbers, slower."""
        model.eval()  # BatchNorm uses running statistics: each sample's gradient is its own
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def sample_loss(p: dict[str, torch.Tensor], x: Inputs, y: torch.Tensor) -> torch.Tensor:
            if isinstance(x, dict):
                logits = functional_call(model, (p, buffers), (), {k: v.unsqueeze(0) for k, v in x.items()})
            else:
                logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
            return F.cross_entropy(logits, y.unsqueeze(0))

        per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        for i in range(0, count(inputs), chunk):
            x, y = select(inputs, slice(i, i + chunk)), labels[i : i + chunk]
            if self.vmap:
                try:
                    grads = per_sample_grad(params, x, y)
                except Exception:  # any vmap limitation: the loop below gives the same result
                    self.vmap = False
            if not self.vmap:
                grads = self._sample_by_sample(model, x, y)
            for name, g in grads.items():
                sq = g.pow(2).sum(0)
                self.sums[name] = self.sums[name] + sq if name in self.sums else sq
            self.count += len(y)

    @staticmethod
    def _sample_by_sample(model: nn.Module, inputs: Inputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample gradients with one ordinary backward pass each, stacked like vmap's."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        rows: list[tuple[torch.Tensor, ...]] = []
        for j in range(len(labels)):
            x = select(inputs, slice(j, j + 1))
            loss = F.cross_entropy(call(model, x), labels[j : j + 1])
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            rows.append(tuple(torch.zeros_like(p) if g is None else g for (_, p), g in zip(named, grads, strict=True)))
        return {n: torch.stack([r[k] for r in rows]) for k, (n, _) in enumerate(named)}

    def mean(self) -> dict[str, torch.Tensor]:
        return {name: s / self.count for name, s in self.sums.items()}


ParamCriterion = Literal["weight_l1", "weight_l2", "grad_norm", "hessian_trace", "fisher"]


def weight_norm_importance(model: nn.Module, p: int) -> dict[str, float]:
    """||w||_p per parameter tensor, divided by its size so big and small tensors compare."""
    return {
        n: float(w.detach().abs().pow(p).sum().pow(1 / p)) / w.numel() ** (1 / p)
        for n, w in model.named_parameters()
        if w.requires_grad
    }


def grad_norm_importance(
    model: nn.Module, inputs: Inputs, labels: torch.Tensor, batch_size: int = 64
) -> dict[str, float]:
    """L2 norm of dL/dw per tensor, averaged over calibration batches."""
    model.eval()
    sums: dict[str, float] = {}
    batches = 0
    for i in range(0, count(inputs), batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(call(model, select(inputs, slice(i, i + batch_size))), labels[i : i + batch_size]).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                sums[n] = sums.get(n, 0.0) + float(p.grad.norm())
        batches += 1
    model.zero_grad(set_to_none=True)
    return {n: s / batches for n, s in sums.items()}


def hutchinson_trace(
    loss_fn: Callable[[], torch.Tensor], params: dict[str, torch.Tensor], samples: int, seed: int = 0
) -> dict[str, float]:
    """Per-tensor Hessian trace estimate E[v^T H v] with Rademacher v (Hutchinson, 1989)."""
    generator = torch.Generator().manual_seed(seed)
    names = list(params)
    tensors = [params[n] for n in names]
    grads = torch.autograd.grad(loss_fn(), tensors, create_graph=True)
    traces = dict.fromkeys(names, 0.0)
    for _ in range(samples):
        vs = [torch.randint(0, 2, t.shape, generator=generator).to(t.dtype) * 2 - 1 for t in tensors]
        hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)
        for n, v, hv in zip(names, vs, hvs, strict=True):
            traces[n] += float((v * hv).sum()) / samples
    return traces


def hessian_trace_importance(
    model: nn.Module, inputs: Inputs, labels: torch.Tensor, samples: int = 8, batch_size: int = 64, seed: int = 0
) -> dict[str, float]:
    """Hutchinson trace of the loss Hessian per tensor, averaged over calibration batches."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    totals = dict.fromkeys(params, 0.0)
    batches = 0
    for i in range(0, count(inputs), batch_size):
        x, y = select(inputs, slice(i, i + batch_size)), labels[i : i + batch_size]
        traces = hutchinson_trace(lambda x=x, y=y: F.cross_entropy(call(model, x), y), params, samples, seed + i)
        for n, t in traces.items():
            totals[n] += t
        batches += 1
    return {n: t / batches for n, t in totals.items()}


def parameter_importance(
    model: nn.Module,
    criterion: ParamCriterion,
    inputs: Inputs,
    labels: torch.Tensor,
    hutchinson_samples: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """One score per trainable parameter tensor (higher = more important).

    In a distributed run each rank scores its shard of the calibration samples and the ranks
    average the scores, weighted by shard size (the Fisher diagonal is a mean over samples; the
    gradient-norm and Hessian-trace scores are means over batches, near enough the same)."""
    if criterion in ("weight_l1", "weight_l2"):
        return weight_norm_importance(model, 1 if criterion == "weight_l1" else 2)
    world = distributed.current()
    if world.size > 1:
        mine = torch.arange(world.rank, count(inputs), world.size)
        scores = _scores(model, criterion, select(inputs, mine), labels[mine], hutchinson_samples, seed)
        return distributed.weighted_mean(scores, float(len(mine)))
    return _scores(model, criterion, inputs, labels, hutchinson_samples, seed)


def _scores(
    model: nn.Module, criterion: ParamCriterion, inputs: Inputs, labels: torch.Tensor, samples: int, seed: int
) -> dict[str, float]:
    if criterion == "grad_norm":
        return grad_norm_importance(model, inputs, labels)
    if criterion == "hessian_trace":
        return hessian_trace_importance(model, inputs, labels, samples, seed=seed)
    fisher = FisherDiagonal()
    fisher.add(model, inputs, labels)
    return {n: float(v.sum()) for n, v in fisher.mean().items()}


def layer_of(param_name: str) -> str:
    """The module a parameter belongs to: 'features.0.0.weight' -> 'features.0.0'."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def aggregate_by_layer(scores: dict[str, float]) -> dict[str, float]:
    """Sum of tensor scores per owning module."""
    out: dict[str, float] = {}
    for name, score in scores.items():
        out[layer_of(name)] = out.get(layer_of(name), 0.0) + score
    return out
