"""First-order MAML and Reptile: meta-gradients against a hand computation, episodes, heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.data.batches import TensorSplit
from edgeslim.errors import UserError
from edgeslim.train.meta import (
    Episode,
    EpisodeSampler,
    Functional,
    MetaSettings,
    episode_data,
    held_out_split,
    meta_train,
    task_gradient,
)


def _linear_regression() -> Functional:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    return Functional(model, {}, ("weight", "bias"), F.mse_loss)


def _hand_grad(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dw, d/db of mean((x w^T + b - y)^2), written out."""
    r = x @ w.T + b - y  # (n, 1)
    n = len(x)
    return 2 / n * (r.T @ x), 2 / n * r.sum(0)


def _hand_adapt(w, b, x, y, steps, lr):
    for _ in range(steps):
        gw, gb = _hand_grad(w, b, x, y)
        w, b = w - lr * gw, b - lr * gb
    return w, b


@pytest.fixture
def regression_task():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 2, generator=g)
    y = (x @ torch.tensor([[1.5], [-2.0]]) + 0.3 + 0.1 * torch.randn(10, 1, generator=g)).float()
    return (x[:4], y[:4]), (x[4:], y[4:])


def test_fomaml_meta_gradient_matches_a_hand_computation(regression_task):
    f = _linear_regression()
    params = f.params()
    support, query = regression_task
    meta, _ = task_gradient(f, params, support, query, "fomaml", steps=3, lr=0.1)
    w, b = _hand_adapt(params["weight"], params["bias"], *support, 3, 0.1)
    gw, gb = _hand_grad(w, b, *query)  # the query gradient at the adapted weights (first order)
    torch.testing.assert_close(meta["weight"], gw)
    torch.testing.assert_close(meta["bias"], gb)


def test_reptile_meta_gradient_matches_a_hand_computation(regression_task):
    f = _linear_regression()
    params = f.params()
    (xs, ys), (xq, yq) = regression_task
    meta, _ = task_gradient(f, params, (xs, ys), (xq, yq), "reptile", steps=3, lr=0.1)
    w, b = _hand_adapt(params["weight"], params["bias"], torch.cat([xs, xq]), torch.cat([ys, yq]), 3, 0.1)
    torch.testing.assert_close(meta["weight"], params["weight"] - w)  # θ - φ over the whole episode
    torch.testing.assert_close(meta["bias"], params["bias"] - b)


def _classification() -> tuple[TensorSplit, Functional]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(8)
    x = torch.randn(len(y), 4, generator=g) + F.one_hot(y, 6).float()[:, :4] * 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    return TensorSplit(x, y), Functional.of(model, "2")


def test_one_outer_step_is_the_mean_task_gradient():
    """With SGD as the outer optimizer, θ moves by -β × the meta-batch's mean task gradient."""
    split, f = _classification()
    theta = f.params()
    settings = MetaSettings("fomaml", inner_steps=2, inner_lr=0.1, meta_batch=3, iterations=1, head="reindex")
    meta_train(
        f,
        split,
        EpisodeSampler(split.labels, range(6), 3, 2, 2, 7, "t"),
        settings,
        lambda p: torch.optim.SGD(p, lr=0.5),
    )
    replay = EpisodeSampler(split.labels, range(6), 3, 2, 2, 7, "t")
    total = {n: torch.zeros_like(p) for n, p in theta.items()}
    for _ in range(3):
        ep = replay.sample()
        local = f.episode_params(theta, ep, "reindex")
        meta, _ = task_gradient(
            f, local, episode_data(split, ep, "support"), episode_data(split, ep, "query"), "fomaml", 2, 0.1
        )
        for n, g in f.full_gradient(meta, theta, ep, "reindex").items():
            total[n] += g / 3
    for name, p in f.model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[name] - 0.5 * total[name])


def test_heads_per_episode():
    _split, f = _classification()
    params = f.params()
    ep = Episode((4, 1), torch.tensor([0]), torch.tensor([1]))
    zero = f.episode_params(params, ep, "zero")
    assert zero["2.weight"].shape == (2, 8) and not zero["2.weight"].any() and not zero["2.bias"].any()
    own = f.episode_params(params, ep, "reindex")
    assert torch.equal(own["2.weight"], params["2.weight"][[4, 1]])
    grads = {n: torch.ones_like(p) for n, p in own.items()}
    full = f.full_gradient(grads, params, ep, "reindex")
    assert full["2.weight"][[4, 1]].eq(1).all() and full["2.weight"][[0, 2, 3, 5]].eq(0).all()
    assert not f.full_gradient(grads, params, ep, "zero")["2.weight"].any()  # a zero head is the episode's own


def test_episodes_stay_in_their_classes_and_are_seeded():
    labels = torch.arange(10).repeat_interleave(30)
    meta_classes, held_out = held_out_split(range(10), 3, "t")
    assert held_out == [7, 8, 9] and meta_classes == list(range(7))
    sampler = EpisodeSampler(labels, meta_classes, 5, 5, 15, 0, "t")
    again = EpisodeSampler(labels, meta_classes, 5, 5, 15, 0, "t")
    for _ in range(200):
        ep, same = sampler.sample(), again.sample()
        assert set(labels[ep.support].tolist()) | set(labels[ep.query].tolist()) <= set(meta_classes)
        assert not set(ep.support.tolist()) & set(ep.query.tolist())
        assert len(ep.support) == 25 and len(ep.query) == 75
        assert torch.equal(ep.support, same.support) and ep.classes == same.classes
    _x, y = episode_data(TensorSplit(torch.zeros(300, 1), labels), ep, "support")
    assert y.tolist() == [i for i in range(5) for _ in range(5)]  # relabelled 0..N-1 in episode order


def test_bad_episodes_are_one_line_errors():
    labels = torch.arange(4).repeat_interleave(3)
    with pytest.raises(UserError, match="5-way episodes need 5 classes"):
        EpisodeSampler(labels, range(4), 5, 1, 1, 0, "stages[2].meta_init")
    with pytest.raises(UserError, match="have only 3"):
        EpisodeSampler(labels, range(4), 2, 2, 2, 0, "stages[2].meta_init")
    with pytest.raises(UserError, match=r"\[12\] are not classes"):
        held_out_split(range(4), [2, 12], "stages[2].meta_init")
