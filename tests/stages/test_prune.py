from __future__ import annotations

import pytest
import torch

from edgeslim.errors import UserError
from tests.conftest import make_context, stage_for


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "hessian"])
def test_prune_removes_channels_and_reloads_exactly(tmp_path, data, loader, trained, importance):
    stages = [{"prune": {"importance": importance, "pruning_ratio": 0.5, "calibration_samples": 64}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    d = result.details
    # Half the channels of both conv layers go: weights shrink to about a quarter.
    assert d["conv_channels"] == {"features.0.0": 8, "features.1.0": 16}
    assert d["params_after"] < 0.35 * d["params_before"]
    assert result.artifact.meta["params"] == d["params_after"]
    # The classifier is protected: still 10 outputs.
    model = loader.load(result.artifact)
    assert model.classifier.out_features == data.num_classes
    # Rebuilding from (architecture + pruning history + safetensors) reproduces the pruned model.
    again = loader.load(result.artifact)
    x = data.test.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert result.details["steps"][0]["val_accuracy_bn_recalibrated"] is not None


def test_prune_to_params_target(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "l2", "target_params": 0.5}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    kept = result.details["params_kept"]
    assert 0.4 < kept <= 0.5


def test_iterative_pruning_reaches_the_same_ratio_in_steps(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "taylor", "pruning_ratio": 0.5, "iterative_steps": 3}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    params = [s["params"] for s in result.details["steps"]]
    assert len(params) == 3 and params[0] > params[1] > params[2]
    assert result.details["conv_channels"] == {"features.0.0": 8, "features.1.0": 16}


def test_prune_ignore_names_must_exist(tmp_path, data, loader, trained):
    stages = [{"prune": {"ignore": ["no.such.layer"]}}]
    with pytest.raises(UserError, match=r"stages\[0\]\.prune\.ignore: no module named no.such.layer"):
        stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
