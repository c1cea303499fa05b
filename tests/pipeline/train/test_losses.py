from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.train.losses import (
    FeatureTap,
    LossConfig,
    classification_loss,
    compose_loss,
    ensemble_probs,
    make_adapter,
)


def test_ensemble_teacher_outputs_are_the_mean_of_members():
    torch.manual_seed(0)
    members = [nn.Linear(5, 3) for _ in range(3)]
    x = torch.randn(8, 5)
    got = ensemble_probs(members, x, temperature=2.0)
    expected = sum(F.softmax(m(x) / 2.0, dim=1) for m in members) / 3
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(8))


def test_distillation_formula():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    t, a = 3.0, 0.7
    got = compose_loss(LossConfig(), teachers=[teacher], temperature=t, alpha=a)(student, x, y)
    p_t = torch.softmax(teacher(x) / t, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student(x) / t, 1))).sum(1).mean()
    expected = a * t * t * kl + (1 - a) * F.cross_entropy(student(x), y)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-5)


def test_focal_loss_formula_and_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    pt = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    expected = (-((1 - pt) ** 2) * pt.log()).mean()
    assert classification_loss(logits, y, LossConfig(name="focal", focal_gamma=2)).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    assert classification_loss(logits, y, LossConfig(name="focal", focal_gamma=0)).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), rel=1e-5
    )


def test_label_smoothing_and_l1_penalty():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    cfg = LossConfig(label_smoothing=0.1, l1_penalty=0.01)
    expected = F.cross_entropy(model(x), y, label_smoothing=0.1) + 0.01 * model.weight.abs().sum()
    assert compose_loss(cfg)(model, x, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_hint_loss_matches_adapted_features():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 3))
    s_tap, t_tap = FeatureTap(student[0]), FeatureTap(teacher[0])
    adapter = make_adapter(4, 8, spatial=True)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    loss = compose_loss(LossConfig(), teachers=[teacher], alpha=0.0, hint=(s_tap, t_tap, adapter, 0.5))
    got = loss(student, x, y)
    expected = F.cross_entropy(student(x), y) + 0.5 * F.mse_loss(adapter(student[0](x)), teacher[0](x))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
