"""Per-parameter importance: the Fisher diagonal accumulates over every sample; Hutchinson traces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeslim.models.zoo import TinyCNN
from edgeslim.train.importance import FisherDiagonal


def _exact_fisher(model, x, y):
    """Reference: one backward pass per sample, squared gradients averaged."""
    model.eval()
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            sums[n] += p.grad.pow(2)
    return {n: s / len(x) for n, s in sums.items()}


def test_fisher_matches_per_sample_loop_and_accumulates(data):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes)
    x, y = data.train.tensors[0][:20], data.train.tensors[1][:20]
    exact = _exact_fisher(model, x, y)

    fisher = FisherDiagonal()
    fisher.add(model, x[:7], y[:7], chunk=4)  # two calls, odd chunking: must still be the mean of all 20
    fisher.add(model, x[7:], y[7:], chunk=5)
    assert fisher.count == 20
    ours = fisher.mean()
    for name, ref in exact.items():
        torch.testing.assert_close(ours[name], ref, rtol=1e-4, atol=1e-9)

    # It is not the last sample alone (what torch-pruning 1.6.1's HessianImportance keeps).
    last = _exact_fisher(model, x[-1:], y[-1:])
    name = "features.0.0.weight"
    assert not torch.allclose(ours[name], last[name], rtol=0.05)


def test_hutchinson_trace_matches_exact_hessian_trace_of_a_quadratic():
    from edgeslim.train.importance import hutchinson_trace

    torch.manual_seed(0)
    a = torch.randn(6, 6)
    hessian = a @ a.T + torch.eye(6)  # loss = 0.5 w^T H w + u^T b: exact trace per tensor is known
    b = torch.randn(3)
    w = torch.randn(6, requires_grad=True)
    u = torch.randn(3, requires_grad=True)

    def loss() -> torch.Tensor:
        return 0.5 * w @ hessian @ w + (u**2).sum() * 1.5 + u @ b

    traces = hutchinson_trace(loss, {"w": w, "u": u}, samples=2000, seed=0)
    assert traces["w"] == pytest.approx(float(hessian.trace()), rel=0.05)
    assert traces["u"] == pytest.approx(3 * 3.0, rel=1e-6)  # diagonal Hessian: exact for Rademacher probes


def test_parameter_importance_criteria_give_a_score_per_tensor(data):
    from edgeslim.train.importance import aggregate_by_layer, parameter_importance

    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes)
    x, y = data.train.tensors[0][:64], data.train.tensors[1][:64]
    names = {n for n, _ in model.named_parameters()}
    for criterion in ("weight_l1", "weight_l2", "grad_norm", "hessian_trace", "fisher"):
        scores = parameter_importance(model, criterion, x, y, hutchinson_samples=2)
        assert set(scores) == names, criterion
        assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    layers = aggregate_by_layer(parameter_importance(model, "fisher", x, y))
    assert set(layers) == {"features.0.0", "features.0.1", "features.1.0", "features.1.1", "classifier"}


def test_fisher_of_a_bert_with_named_inputs_falls_back_from_vmap_to_the_same_numbers():
    """Hugging Face attention checks ``torch.all(mask == 1)`` (data-dependent): vmap cannot run it."""
    from tests.stages.test_prune_attention import TinyBert

    torch.manual_seed(0)
    model = TinyBert(in_channels=200)
    ids = torch.randint(1, 200, (6, 16))
    mask = torch.ones_like(ids)
    mask[:3, 12:] = 0  # padded reviews: the mask matters
    y = torch.randint(0, 2, (6,))
    fisher = FisherDiagonal()
    fisher.add(model, {"input_ids": ids, "attention_mask": mask}, y, chunk=4)
    assert not fisher.vmap and fisher.count == 6
    exact = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(ids[i : i + 1], mask[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            exact[n] += p.grad.pow(2) / 6
    ours = fisher.mean()
    for name, ref in exact.items():
        torch.testing.assert_close(ours[name], ref, rtol=1e-4, atol=1e-9)
