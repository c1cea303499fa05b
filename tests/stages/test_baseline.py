from __future__ import annotations

import pytest

from edgeslim.train.loop import evaluate
from tests.conftest import make_context, stage_for


def test_baseline_evaluates_the_input_model(tmp_path, data, loader, trained):
    result = stage_for(["baseline"]).execute(make_context(tmp_path, data, loader, trained))
    expected, _ = evaluate(loader.load(trained), data.test)
    assert result.details["torch_test_accuracy"] == pytest.approx(expected)
    per_class = result.details["per_class_accuracy"]
    assert set(per_class) == set(range(10))
    counts = data.test.tensors[1].bincount()
    weighted = sum(per_class[c] * int(counts[c]) for c in per_class) / len(data.test)
    assert weighted == pytest.approx(expected)
    assert result.details["params"] == trained.meta["params"]
