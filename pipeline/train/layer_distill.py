"""Layer-by-layer distillation for transformers: hidden states and attention maps.

The logits-only loss (``losses.distillation_term``) tells a pruned student *what* the teacher
answers; matching each block's output and attention pattern tells it *how* (TinyBERT, Jiao et al.
2020; MiniLM, Wang et al. 2020). Both models' transformer blocks are found by name (``…layer.N``,
``…layers.N``, ``…blocks.N``, ``…h.N``: Hugging Face and most hand-written transformers) and
read with forward hooks, so nothing about the model's code is assumed:

* **hidden states**: a block's output (the first element when it returns a tuple), compared with
  MSE over the real (non-padding) tokens. A student whose hidden size was pruned gets one learned
  linear adapter per mapped layer, trained with the model and dropped afterwards.
* **attention maps**: the attention probabilities a block returns beside its output (Hugging Face
  models do when ``config.output_attentions`` is set, which this module switches on for the
  duration and restores). Heads are averaged before comparing, because head pruning leaves the
  student fewer heads than the teacher and no head-to-head correspondence; the loss is
  ``KL(teacher || student)`` per query row over the real tokens (MiniLM's choice: it is scale-free,
  where MSE of probabilities around ``1/sequence`` is vanishingly small).

When the student has fewer blocks the mapping is uniform (student block ``i`` of ``S`` learns from
teacher block ``ceil((i + 1) * T / S) - 1``: the last learns from the last) unless given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.data.batches import Inputs
from edgeslim.models.blocks import transformer_blocks


def uniform_mapping(student_blocks: int, teacher_blocks: int) -> dict[int, int]:
    """Student block ``i`` → teacher block ``ceil((i + 1) * T / S) - 1`` (identity when equal)."""
    return {i: max(0, math.ceil((i + 1) * teacher_blocks / student_blocks) - 1) for i in range(student_blocks)}


@contextmanager
def attention_outputs(*models: nn.Module) -> Iterator[None]:
    """Hugging Face sub-models return attention probabilities from every block while inside."""
    configs = [
        m.config
        for model in models
        for m in model.modules()
        if hasattr(getattr(m, "config", None), "output_attentions")
    ]
    before = [(c._attn_implementation, c.output_attentions) for c in configs]
    for c in configs:  # only eager attention computes the probabilities (sdpa never materializes them)
        c._attn_implementation = "eager"
        c.output_attentions = True
    try:
        yield
    finally:
        for c, (implementation, output) in zip(configs, before, strict=True):
            c.output_attentions = output
            c._attn_implementation = implementation


class BlockTaps:
    """Keeps every block's latest hidden state and (when returned) attention probabilities."""

    def __init__(self, blocks: list[tuple[str, nn.Module]]):
        self.hidden: dict[int, torch.Tensor] = {}
        self.attention: dict[int, torch.Tensor] = {}
        self._handles = [module.register_forward_hook(self._hook(i)) for i, (_, module) in enumerate(blocks)]

    def _hook(self, index: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self.hidden[index] = hidden
            if isinstance(output, (tuple, list)):
                maps = [t for t in output[1:] if isinstance(t, torch.Tensor) and t.dim() == 4]
                if maps and maps[0].shape[-1] == maps[0].shape[-2]:
                    self.attention[index] = maps[0]

        return hook

    def clear(self) -> None:
        self.hidden.clear()
        self.attention.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def token_mask(x: Inputs, hidden: torch.Tensor) -> torch.Tensor | None:
    """``(batch, sequence)`` bool mask of real tokens when the inputs carry an attention mask."""
    mask = x.get("attention_mask") if isinstance(x, Mapping) else None
    if mask is None or hidden.dim() != 3 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        return None
    return mask.bool()


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE over real tokens (all positions without a mask)."""
    if mask is None:
        return F.mse_loss(student, teacher)
    return F.mse_loss(student[mask], teacher[mask])


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``KL(teacher || student)`` of head-averaged attention rows, mean over real query tokens."""
    eps = 1e-8
    s = student.mean(1)
    s = s / s.sum(-1, keepdim=True).clamp_min(eps)  # attention dropout leaves rows that do not sum to 1
    t = teacher.mean(1)
    row_kl = (t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())).sum(-1)  # (batch, query)
    return row_kl[mask].mean() if mask is not None else row_kl.mean()


@dataclass
class LayerDistiller:
    """Hooks on a student and its teacher; ``loss(x)`` after both ran forward on ``x``."""

    student: nn.Module
    teacher: nn.Module
    hidden_weight: float
    attention_weight: float
    mapping: dict[int, int]
    adapters: nn.ModuleDict = field(default_factory=nn.ModuleDict)

    def __post_init__(self) -> None:
        self._student_taps = BlockTaps(transformer_blocks(self.student))
        self._teacher_taps = BlockTaps(transformer_blocks(self.teacher))

    def fit_adapters(self, example: Inputs, run) -> None:
        """One forward of both models on ``example`` (``run(model, x)``) to size the hidden adapters."""
        with torch.no_grad():
            run(self.student, example)
            run(self.teacher, example)
        for s, t in self.mapping.items():
            hs, ht = self._student_taps.hidden.get(s), self._teacher_taps.hidden.get(t)
            if hs is None or ht is None:
                raise ValueError(f"block {s if hs is None else t} produced no hidden state")
            if hs.shape[-1] != ht.shape[-1]:
                self.adapters[str(s)] = nn.Linear(hs.shape[-1], ht.shape[-1], bias=False)
        if self.attention_weight > 0:
            missing = [s for s in self.mapping if s not in self._student_taps.attention]
            missing += [t for t in self.mapping.values() if t not in self._teacher_taps.attention]
            if missing:
                raise ValueError(
                    "the blocks return no attention probabilities (a Hugging Face model does with "
                    "output_attentions; other models: set attention to 0)"
                )
        self._student_taps.clear()
        self._teacher_taps.clear()

    def loss(self, x: Inputs) -> torch.Tensor:
        """Weighted hidden-state and attention losses, averaged over the mapped block pairs."""
        total = torch.zeros(())
        s_taps, t_taps = self._student_taps, self._teacher_taps
        for s, t in self.mapping.items():
            hs, ht = s_taps.hidden[s], t_taps.hidden[t].detach()
            mask = token_mask(x, hs)
            if self.hidden_weight > 0:
                if str(s) in self.adapters:
                    hs = self.adapters[str(s)](hs)
                total = total + self.hidden_weight * hidden_loss(hs, ht, mask)
            if self.attention_weight > 0:
                total = total + self.attention_weight * attention_loss(
                    s_taps.attention[s], t_taps.attention[t].detach(), mask
                )
        s_taps.clear()
        t_taps.clear()
        return total / max(1, len(self.mapping))

    def remove(self) -> None:
        self._student_taps.remove()
        self._teacher_taps.remove()
