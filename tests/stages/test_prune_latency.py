"""Latency-driven per-layer pruning: a measured per-layer latency table chooses where channels go.

On a model whose time and weights sit in different layers, the per-layer ratios chosen for a latency
target measure faster than a uniform ratio that keeps the same number of parameters."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgeslim.api import parse_config, run
from edgeslim.config.schema import MeasureSpec
from edgeslim.data.datasets import load_data
from edgeslim.engine.measure import measure_side_by_side
from edgeslim.errors import UserError
from edgeslim.prune.latency import LatencyTable, choose_ratios
from tests.conftest import small_config

MODEL = {"name": "tests.helpers.factories:lopsided_cnn"}
DATA = {"name": "digits", "max_samples": 200, "image_size": 32}
MEASURE = {"warmup": 5, "runs": 40, "max_seconds": 1.0}


def test_the_greedy_choice_spends_the_target_where_milliseconds_are_cheapest_in_parameters():
    table = LatencyTable(full_ms=10.0, full_params=1000)
    table.layers = {
        "early": {0.25: (8.0, 990), 0.5: (6.0, 980), 0.75: (4.5, 970)},  # 2 ms for 10 parameters
        "late": {0.25: (9.0, 800), 0.5: (8.0, 600), 0.75: (7.0, 400)},  # 1 ms for 200 parameters
    }
    ratios, predicted = choose_ratios(table, 6.0, [0.25, 0.5, 0.75])
    assert ratios == {"early": 0.5} and predicted == pytest.approx(6.0)
    ratios, predicted = choose_ratios(table, 3.0, [0.25, 0.5, 0.75])
    assert ratios == {"early": 0.75, "late": 0.5} and predicted == pytest.approx(2.5)  # stops once reached
    ratios, predicted = choose_ratios(table, 0.5, [0.25, 0.5, 0.75])  # unreachable: everything at its largest
    assert predicted > 0.5 and ratios == {"early": 0.75, "late": 0.75}


def test_a_latency_target_is_refused_with_other_targets():
    with pytest.raises(UserError, match="at most one of target_params, target_macs and target_latency_ms"):
        parse_config(small_config(["baseline", {"prune": {"target_latency_ms": 1.0, "target_params": 0.5}}]))
    with pytest.raises(UserError, match="iterative_steps 1"):
        parse_config(small_config(["baseline", {"prune": {"target_latency_ms": 1.0, "iterative_steps": 2}}]))


def test_measured_per_layer_ratios_beat_a_uniform_ratio_with_the_same_parameters(tmp_path):
    base = small_config(["baseline"], model=MODEL, data=DATA, measure=MEASURE, name="lat")
    first = run(base, tmp_path)
    full_ms = first.final.metrics.latency_ms.p50
    target = 0.55 * full_ms
    guided = run({**base, "stages": ["baseline", {"prune": {"target_latency_ms": target}}]}, tmp_path)
    record = guided.stage("prune")
    details = record.details
    latency = details["latency_target"]
    assert latency["target"] == "reached" and latency["predicted_ms"] <= target
    assert set(latency["table"]["layers"]) >= {"0", "2", "5", "7"}  # every conv measured; the classifier is kept
    early = latency["ratios"].get("0", 0) + latency["ratios"].get("2", 0)
    late = latency["ratios"].get("5", 0) + latency["ratios"].get("7", 0)
    assert early > late, latency["ratios"]  # the time is early, the weights late
    assert latency["measured_ms"] < latency["measured_full_ms"]
    assert any("predicted p50" in n and "measured" in n for n in record.notes)
    assert latency["table_cached_from"] is None  # measured by this stage
    kept = details["params_kept"]
    uniform = run(
        {**base, "name": "uni", "stages": ["baseline", {"prune": {"target_params": round(kept, 4)}}]}, tmp_path
    )
    assert uniform.stage("prune").details["params_kept"] == pytest.approx(kept, abs=0.03)
    data = load_data(parse_config(base).data)
    files = [guided.model_file("prune"), uniform.model_file("prune")]
    with tempfile.TemporaryDirectory():
        timed = measure_side_by_side(
            files, parse_config(base).host, MeasureSpec(warmup=10, runs=200, max_seconds=4), data
        )
    ours, theirs = (np.median(t["latency_samples_ms"]) for t in timed)
    assert ours < 0.9 * theirs, (ours, theirs)
    assert Path(guided.run_dir).is_dir()
    # another target on the same baseline (a search's next trial): the table is read, not timed again
    looser = run({**base, "stages": ["baseline", {"prune": {"target_latency_ms": 0.8 * full_ms}}]}, tmp_path)
    again = looser.stage("prune").details["latency_target"]
    assert looser.stage("prune").status != "cached"  # a new stage run ...
    assert again["table_cached_from"] and again["table"] == latency["table"]  # ... that reused the table
    assert any("reused from this host's cache" in n for n in looser.stage("prune").notes)
    # a looser target stops earlier on the same greedy path: no layer pruned more (the grid is coarse,
    # so both targets may stop at the same step), and its own target is reached
    assert all(r <= latency["ratios"].get(layer, 0) for layer, r in again["ratios"].items()), again["ratios"]
    assert again["target"] == "reached" and again["predicted_ms"] <= 0.8 * full_ms


def test_round_to_auto_times_the_multiples_on_mobilenet_v3_and_prunes_to_the_chosen_one(tmp_path):
    model = {"name": "mobilenet_v3_small", "kwargs": {"width_mult": 0.5, "small_input": True}}
    stages = ["baseline", {"prune": {"importance": "l1", "pruning_ratio": 0.4, "round_to": "auto"}}]
    cfg = small_config(stages, model=model, data=DATA, measure=MEASURE, name="auto")
    result = run(cfg, tmp_path)
    details = result.stage("prune").details
    auto = details["round_to_auto"]
    assert auto["chosen"] == details["round_to"] and str(auto["chosen"]) in auto["measured"]
    assert set(auto["measured"]) == {"1", "4", "8", "16"}
    assert any(n.startswith("round_to auto: uniform ratio 0.4") for n in result.stage("prune").notes)
    before = {n: c for n, c in result.stage("prune").details["conv_channels"].items()}
    baseline = parse_config(cfg)
    assert before and baseline.stages[1].settings.round_to == "auto"
    if auto["chosen"] > 1:  # every pruned layer keeps a multiple of it (torch-pruning rounds down)
        import torch

        from edgeslim.models.zoo import build_model

        full = build_model("mobilenet_v3_small", model["kwargs"], 1, 10)
        widths = {n: m.out_channels for n, m in full.named_modules() if isinstance(m, torch.nn.Conv2d)}
        pruned = [c for n, c in before.items() if c < widths[n]]  # (a layer it would empty stays whole)
        assert pruned and all(c % auto["chosen"] == 0 for c in pruned)
    again = run(cfg, tmp_path)  # cached: the timing-dependent choice is made once
    assert again.stage("prune").status == "cached"
    with pytest.raises(UserError, match="round_to"):
        parse_config(small_config(["baseline", {"prune": {"round_to": "fast"}}]))
