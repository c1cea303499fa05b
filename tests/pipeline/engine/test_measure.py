"""Side-by-side measurement: rounds from ``measure.runs``, latency fields per model, the measurement key."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.api import parse_config
from edgeslim.engine import keys
from edgeslim.engine.measure import measure_side_by_side, rounds_for
from edgeslim.engine.runner import side_by_side_fields
from edgeslim.engine.stats import FASTER, SLOWER
from tests.conftest import small_config
from tests.pipeline.devices.test_host import matmul_chain
from tests.pipeline.engine.test_stats import timings


def test_runs_are_spread_over_rounds():
    assert rounds_for(200) == (10, 20)
    assert rounds_for(10) == (10, 1)
    assert rounds_for(5) == (5, 1)
    assert rounds_for(101) == (10, 11)  # rounded up: never fewer runs than asked


def test_measure_side_by_side_fields(tmp_path, data):
    config = parse_config(small_config(["baseline"]))  # measure: warmup 2, runs 10
    light, heavy = matmul_chain(tmp_path / "a.onnx", 1), matmul_chain(tmp_path / "b.onnx", 40, width=256)
    stage, beside = measure_side_by_side([light, heavy], config.host, config.measure, data)
    for fields in (stage, beside):
        assert fields["latency_runs"] == 10 and fields["latency_rounds"] == 10
        assert len(fields["latency_samples_ms"]) == 10
        assert fields["latency_ms"]["p50"] == pytest.approx(np.median(fields["latency_samples_ms"]), abs=1e-5)
        assert fields["input_shape"] == [1, 1, 8, 8] and fields["threads"] == 1 and fields["batch_size"] == 1
    assert stage["peak_rss_mb"] > 0 and beside["peak_rss_mb"] is None
    assert beside["latency_ms"]["p50"] > stage["latency_ms"]["p50"]


def test_side_by_side_fields_from_synthetic_samples():
    """A stage slower than its input (but faster than the baseline), from known samples: both ratios,
    both intervals and the verdicts land in the record's fields."""
    baseline, previous, stage = timings(2.0, 0), timings(1.0, 1), timings(1.25, 2)
    labels = {"previous": "04-export", "reference": "01-baseline"}
    fields = side_by_side_fields(list(stage), {"previous": list(previous), "reference": list(baseline)}, labels)
    low, high = fields["latency_p50_ci_ms"]
    assert low < np.median(stage) < high and fields["latency_confidence"] == 0.95
    prev, ref = fields["speedup_vs_previous"], fields["speedup_vs_reference"]
    assert prev["against"] == "04-export" and ref["against"] == "01-baseline"
    assert prev["ci_low"] <= prev["ratio"] <= prev["ci_high"] < 0.98 and prev["verdict"] == SLOWER
    assert 1.02 < ref["ci_low"] <= ref["ratio"] <= ref["ci_high"] and ref["verdict"] == FASTER
    assert prev["against_p50_ms"] == float(np.median(previous))
    assert set(side_by_side_fields(list(stage), {}, {})) == {"latency_confidence", "latency_p50_ci_ms"}


def test_measurement_key_covers_every_timed_file():
    config = parse_config(small_config(["baseline"]))
    host, spec = config.host, config.measure
    base = {"stage": "a" * 64, "previous": "b" * 64, "reference": "c" * 64}
    key = keys.measurement_key(base, spec, host, "code")
    assert keys.measurement_key(dict(base), spec, host, "code") == key
    for role in base:  # a changed partner re-measures the stage too: its ratios are against that model
        assert keys.measurement_key({**base, role: "d" * 64}, spec, host, "code") != key
    assert keys.measurement_key({"stage": "a" * 64}, spec, host, "code") != key
    eval_only = spec.model_copy(update={"eval_batch_size": 7})
    assert keys.measurement_key(base, eval_only, host, "code") == key
    assert keys.measurement_key(base, spec.model_copy(update={"runs": 11}), host, "code") != key
