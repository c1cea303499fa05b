"""Pruning criteria: our Hessian (OBD) criterion accumulates over every calibration sample, and the
registry builds each criterion by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from edgeslim.models.zoo import TinyCNN
from edgeslim.prune.criteria import CRITERIA, OBDHessianImportance, build_importance, register_criterion
from tests.pipeline.train.test_importance import _exact_fisher


def test_torch_pruning_hessian_keeps_only_the_last_sample(data):
    """Documents the upstream bug our criterion replaces (if this starts failing, upstream fixed it)."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes).eval()
    x, y = data.train.tensors[0][:5], data.train.tensors[1][:5]
    upstream = tp.importance.HessianImportance()
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        upstream.accumulate_grad(model)
    param = model.features[0][0].weight
    assert upstream._counter[param] == 1  # five samples seen, counted once
    torch.testing.assert_close(upstream._accu_grad[param], _exact_fisher(model, x[-1:], y[-1:])["features.0.0.weight"])


def test_obd_importance_scores_are_saliency_sums(data):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes).eval()
    x, y = data.train.tensors[0][:16], data.train.tensors[1][:16]
    importance = OBDHessianImportance()
    importance.accumulate(model, x, y)
    importance.load_into_grads(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:2])
    conv = model.features[0][0]
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    scores = importance(group)
    assert scores.shape == (conv.out_channels,)
    assert torch.isfinite(scores).all() and (scores >= 0).all()
    # A channel that outputs nothing has zero saliency in every term of its group: it must rank lowest.
    with torch.no_grad():
        conv.weight[3].zero_()
        bn = model.features[0][1]
        bn.weight[3] = 0.0
        bn.bias[3] = 0.0  # channel 3 now outputs zeros: nothing downstream depends on it
    importance.reset()
    importance.accumulate(model, x, y)
    importance.load_into_grads(model)
    scores = importance(group)
    assert int(scores.argmin()) == 3


def test_criteria_are_built_by_name_and_new_ones_can_be_registered():
    assert {"l1", "l2", "taylor", "hessian"} <= set(CRITERIA)
    assert isinstance(build_importance("hessian"), OBDHessianImportance)
    assert build_importance("l1") is not build_importance("l1")  # a fresh object each time

    @register_criterion("test-l3")
    def l3() -> tp.importance.Importance:
        return tp.importance.MagnitudeImportance(p=3)

    try:
        assert isinstance(build_importance("test-l3"), tp.importance.MagnitudeImportance)
    finally:
        del CRITERIA["test-l3"]
    with pytest.raises(KeyError, match="registered: l1, l2, taylor, hessian"):
        build_importance("test-l3")
