"""Which channel multiples pay on this CPU: ``prune: {round_to: auto}``.

ONNX Runtime's CPU convolutions run channel counts that fill its vector blocks (NCHWc: 8 floats
on AVX2, 16 on AVX-512) in a faster layout than the rest; a model pruned to odd counts can run
*slower* than the unpruned one (MobileNetV3-small at ratio 0.4 here: 0.65x without rounding, 1.87x
with multiples of 8). Which multiple pays depends on the CPU, the thread count and the model, so it
is measured, not assumed: the model is pruned uniformly at the stage's ratio once per candidate
multiple (torch-pruning's ``round_to`` rounds each kept count *down*), each variant is exported and
all are timed side by side (interleaved rounds, the host profile).

Rounding down also removes work, so a faster variant is not proof of a better layout. The measure
is time per MAC: a multiple pays when its variant spends at least ``margin`` less time per MAC than
the unrounded one. Among those that pay, the smallest multiple within ``margin`` of the best time
per MAC wins (it removes the fewest extra channels); when none pays, channels are not rounded.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgeslim.config.schema import HostProfile, MeasureSpec
from edgeslim.data.batches import Inputs
from edgeslim.data.datasets import DataSplits
from edgeslim.engine.measure import measure_side_by_side
from edgeslim.export.onnx_io import export_onnx
from edgeslim.models.loader import count_params_and_macs

CANDIDATES = (1, 4, 8, 16)
MARGIN = 0.05  # 5% less time per MAC: above the spread of interleaved medians seen here (1-3%)

# prune(model copy, multiple) -> the model pruned at the stage's ratio with round_to=multiple
PruneUniform = Callable[[nn.Module, int], nn.Module]


@dataclass
class Multiple:
    multiple: int
    p50_ms: float
    params: int
    macs: int

    @property
    def ms_per_gmac(self) -> float:
        return self.p50_ms / max(self.macs, 1) * 1e9


def measure_multiples(
    model: nn.Module,
    example: Inputs,
    prune_uniform: PruneUniform,
    data: DataSplits,
    host: HostProfile,
    spec: MeasureSpec,
    candidates: tuple[int, ...] = CANDIDATES,
) -> list[Multiple]:
    """Each candidate multiple's uniformly pruned variant (1 always included), timed side by side. A
    layer that a multiple would empty is left whole by torch-pruning (its group check), so a large
    multiple can keep *more* work than a small one; time per MAC accounts for that."""
    rows: list[tuple[int, int, int]] = []
    with tempfile.TemporaryDirectory(prefix="edgeslim-multiples-") as tmp:
        files = []
        for multiple in sorted(set(candidates) | {1}):
            variant = prune_uniform(copy.deepcopy(model), multiple)
            params, macs = count_params_and_macs(variant, example)
            files.append(export_onnx(variant.eval(), example, Path(tmp) / f"round{multiple}.onnx"))
            rows.append((multiple, params, macs))
        timed = measure_side_by_side(files, host, spec, data)
    return [
        Multiple(multiple, fields["latency_ms"]["p50"], params, macs)
        for (multiple, params, macs), fields in zip(rows, timed, strict=True)
    ]


def choose_multiple(measured: list[Multiple], margin: float = MARGIN) -> int:
    """The rule of the module docstring: 1 unless a multiple spends ``margin`` less time per MAC."""
    base = next(m for m in measured if m.multiple == 1)
    paying = [m for m in measured if m.multiple > 1 and m.ms_per_gmac <= (1 - margin) * base.ms_per_gmac]
    if not paying:
        return 1
    best = min(m.ms_per_gmac for m in paying)
    return min(m.multiple for m in paying if m.ms_per_gmac <= (1 + margin) * best)


def describe(measured: list[Multiple], chosen: int, ratio: float) -> tuple[dict[str, Any], str]:
    """Details for the report and the one-line note."""
    base = next(m for m in measured if m.multiple == 1)
    table = {
        str(m.multiple): {"p50_ms": m.p50_ms, "params": m.params, "macs": m.macs, "ms_per_gmac": m.ms_per_gmac}
        for m in measured
    }
    timings = ", ".join(
        f"{m.multiple}: {m.p50_ms:.4g} ms ({m.ms_per_gmac / base.ms_per_gmac:.2f}x time/MAC)" for m in measured
    )
    verdict = (
        f"kept channel counts rounded down to multiples of {chosen}"
        if chosen > 1
        else f"no multiple paid (>= {MARGIN:.0%} less time per MAC): channels not rounded"
    )
    note = (
        f"round_to auto: uniform ratio {ratio:.3g} pruned at each multiple and timed side by side ({timings}); "
        + verdict
    )
    return {"ratio": ratio, "chosen": chosen, "margin": MARGIN, "measured": table}, note
