"""Latency-driven per-layer pruning ratios: what each layer's channels really cost on this CPU.

MACs do not say where the time goes: a convolution at high resolution with few weights can cost
more than a wide one on a small feature map, and ONNX Runtime's kernels run some channel counts
faster than others. So the table is *measured*: for each prunable layer and each ratio on a small
grid, the model with only that layer's channel group pruned is exported and timed side by side
with the unpruned model (one worker, interleaved rounds, the host profile's threads). A layer's
saving at a ratio is the unpruned p50 minus that variant's.

``choose_ratios`` then spends a latency target greedily: at each step it raises the ratio of the
layer whose next grid step saves the most milliseconds per parameter it removes (the parameters
stand for the capacity lost, as in torch-pruning's targets), until the predicted p50 (unpruned
minus the summed savings; savings are taken as additive) reaches the target. The prune stage
prunes with those ratios and reports the predicted against the measured p50 of the result.

``build_table`` keeps a measured table on this host (``edgeslim.devices.host_cache``), keyed by the
model's structure (not its weights), the variants' settings, the host profile, the ``measure:``
budget and this module's code: the trials of a search that try different targets on the same
baseline time it once.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgeslim.config.schema import HostProfile, MeasureSpec
from edgeslim.data.batches import Inputs
from edgeslim.data.datasets import DataSplits
from edgeslim.devices import host_cache
from edgeslim.engine.keys import code_version
from edgeslim.engine.measure import measure_side_by_side
from edgeslim.export.onnx_io import export_onnx
from edgeslim.models.loader import count_params_and_macs

# prune(model copy, layer name, ratio) -> pruned model (the stage's own torch-pruning settings)
PruneOne = Callable[[nn.Module, str, float], nn.Module]


@dataclass
class LatencyTable:
    full_ms: float
    full_params: int
    # layer -> ratio -> (p50 ms of the model with only this layer's group pruned, its parameters)
    layers: dict[str, dict[float, tuple[float, int]]] = field(default_factory=dict)
    coupled: dict[str, list[str]] = field(default_factory=dict)  # layers pruned together with a layer
    cached_from: str | None = None  # when a table read from this host's cache was measured

    def saving(self, layer: str, ratio: float) -> tuple[float, int]:
        """(milliseconds, parameters) removed by pruning ``layer`` at a grid ``ratio`` (0 at ratio 0)."""
        if ratio == 0:
            return 0.0, 0
        ms, params = self.layers[layer][ratio]
        return self.full_ms - ms, self.full_params - params

    def predict(self, ratios: dict[str, float]) -> float:
        return self.full_ms - sum(max(self.saving(layer, r)[0], 0.0) for layer, r in ratios.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "full_ms": self.full_ms,
            "full_params": self.full_params,
            "layers": {n: {str(r): list(v) for r, v in row.items()} for n, row in self.layers.items()},
            "coupled": self.coupled,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LatencyTable:
        layers = {n: {float(r): (float(v[0]), int(v[1])) for r, v in row.items()} for n, row in obj["layers"].items()}
        return cls(
            full_ms=float(obj["full_ms"]), full_params=int(obj["full_params"]), layers=layers, coupled=obj["coupled"]
        )


def _changed_layers(before: nn.Module, after: nn.Module) -> list[str]:
    shapes = {n: tuple(p.shape) for n, p in before.named_parameters()}
    return sorted({n.rsplit(".", 1)[0] for n, p in after.named_parameters() if shapes.get(n) != tuple(p.shape)})


def build_table(
    model: nn.Module,
    example: Inputs,
    candidates: list[str],
    ratios: list[float],
    prune_one: PruneOne,
    data: DataSplits,
    host: HostProfile,
    spec: MeasureSpec,
    cache_key: dict[str, Any] | None = None,
) -> LatencyTable:
    """Measure the table (see the module docstring). Layers whose group another candidate already
    covers (the same layers change) are measured once, under the first name.

    ``cache_key``: whatever else shapes the pruned variants (channel rounding, layers kept whole);
    given, the table is read from this host's cache when it was measured before for this structure
    and these settings (``cached_from`` then says when), and stored there when not."""

    def measure() -> LatencyTable:
        full_params, _ = count_params_and_macs(model, example)
        variants: list[tuple[str, float, int]] = []
        seen: dict[tuple[str, ...], str] = {}
        coupled: dict[str, list[str]] = {}
        with tempfile.TemporaryDirectory(prefix="edgeslim-latency-") as tmp:
            files = [export_onnx(copy.deepcopy(model).eval(), example, Path(tmp) / "full.onnx")]
            for name in candidates:
                probe = prune_one(copy.deepcopy(model), name, ratios[0])
                group = tuple(_changed_layers(model, probe))
                if not group or group in seen:
                    continue
                seen[group] = name
                coupled[name] = list(group)
                for ratio in ratios:
                    pruned = probe if ratio == ratios[0] else prune_one(copy.deepcopy(model), name, ratio)
                    params, _ = count_params_and_macs(pruned, example)
                    files.append(export_onnx(pruned.eval(), example, Path(tmp) / f"{len(files)}.onnx"))
                    variants.append((name, ratio, params))
            timed = measure_side_by_side(files, host, spec, data)
        table = LatencyTable(full_ms=timed[0]["latency_ms"]["p50"], full_params=full_params, coupled=coupled)
        for (name, ratio, params), fields in zip(variants, timed[1:], strict=True):
            table.layers.setdefault(name, {})[ratio] = (fields["latency_ms"]["p50"], params)
        return table

    if cache_key is None:
        return measure()
    key = {
        "structure": host_cache.structure_fingerprint(model, example),
        "candidates": candidates,
        "ratios": ratios,
        "variants": cache_key,
        "host": host.model_dump(mode="json"),
        "measure": spec.model_dump(mode="json", exclude={"eval_batch_size"}),
        "code": code_version(__name__),
    }
    value, measured_at = host_cache.cached("latency_table", key, lambda: measure().to_json())
    table = LatencyTable.from_json(value)
    table.cached_from = measured_at
    return table


def choose_ratios(table: LatencyTable, target_ms: float, grid: list[float]) -> tuple[dict[str, float], float]:
    """Greedy per-layer ratios reaching ``target_ms`` (predicted) at the fewest parameters removed
    per millisecond saved; returns the ratios and the predicted p50 (above the target when even the
    largest ratios of every layer cannot reach it)."""
    chosen = dict.fromkeys(table.layers, 0.0)
    steps = [0.0, *sorted(grid)]
    while table.predict(chosen) > target_ms:
        best, best_value = None, 0.0
        for layer, current in chosen.items():
            ms_now, params_now = table.saving(layer, current)
            for nxt in steps[steps.index(current) + 1 :]:  # any larger ratio: timings are not monotone
                ms_next, params_next = table.saving(layer, nxt)
                if ms_next - ms_now <= 0:
                    continue
                value = (ms_next - ms_now) / max(params_next - params_now, 1)
                if value > best_value:
                    best, best_value = (layer, nxt), value
        if best is None:
            break
        chosen[best[0]] = best[1]
    return {k: v for k, v in chosen.items() if v > 0}, table.predict(chosen)


def block_savings(
    model: nn.Module,
    example: Inputs,
    blocks: list[str],
    data: DataSplits,
    host: HostProfile,
    spec: MeasureSpec,
) -> tuple[dict[str, float], str | None]:
    """Milliseconds each block's absence saves: the model with that one block replaced by the identity,
    timed side by side with the whole model (exported as is, interleaved rounds). Depth pruning divides
    a block's loss increase by it, so a cheap block that costs as much accuracy as a dear one is kept.

    Cached on this host by the model's structure, the blocks, the host profile and the measure budget;
    returns the savings and, when read from the cache, when they were measured (else None)."""

    def measure() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="edgeslim-blocks-") as tmp:
            files = [export_onnx(copy.deepcopy(model).eval(), example, Path(tmp) / "full.onnx")]
            for i, name in enumerate(blocks):
                variant = copy.deepcopy(model).eval()
                variant.set_submodule(name, nn.Identity())
                files.append(export_onnx(variant, example, Path(tmp) / f"{i}.onnx"))
            timed = measure_side_by_side(files, host, spec, data)
        full = timed[0]["latency_ms"]["p50"]
        return {name: full - t["latency_ms"]["p50"] for name, t in zip(blocks, timed[1:], strict=True)}

    key = {
        "structure": host_cache.structure_fingerprint(model, example),
        "blocks": blocks,
        "host": host.model_dump(mode="json"),
        "measure": spec.model_dump(mode="json", exclude={"eval_batch_size"}),
        "code": code_version(__name__),
    }
    value, measured_at = host_cache.cached("block_savings", key, measure)
    return {name: float(ms) for name, ms in value.items()}, measured_at
