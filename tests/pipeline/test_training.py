from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models import TinyCNN
from pipeline.training import (
    OptimizerConfig,
    ScheduleConfig,
    TrainLoopConfig,
    build_optimizer,
    distillation_loss,
    fit,
    lr_multiplier,
    recalibrate_batchnorm,
)


def test_cosine_schedule_with_warmup_and_floor():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1)
    steps, total = 10, 50
    curve = [lr_multiplier(cfg, s, steps, total) for s in range(total)]
    assert curve[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up
    assert curve[10] == pytest.approx(1.0)
    mid = 10 + 20  # halfway through the cosine part
    assert curve[mid] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a >= b for a, b in itertools.pairwise(curve[10:]))
    assert lr_multiplier(cfg, total, steps, total) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("constant", [1, 1, 1, 1]), ("step", [1, 0.5, 0.25, 0.125]), ("exponential", [1, 0.5, 0.25, 0.125])],
)
def test_other_schedules_per_epoch(name, expected):
    cfg = ScheduleConfig(name=name, gamma=0.5, step_epochs=1)
    got = [lr_multiplier(cfg, epoch * 5, 5, 20) for epoch in range(4)]
    assert got == pytest.approx(expected)


def test_no_weight_decay_on_norms_and_biases():
    model = TinyCNN()
    opt = build_optimizer(model, OptimizerConfig(name="adamw", weight_decay=0.05))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"])
    assert all(p.dim() <= 1 for p in plain["params"])
    assert isinstance(opt, torch.optim.AdamW)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "rmsprop", "adagrad"])
def test_every_optimizer_builds(name):
    opt = build_optimizer(TinyCNN(), OptimizerConfig(name=name, lr=0.01))
    assert opt.param_groups[0]["lr"] == 0.01


def test_diverging_training_stops_with_a_clear_error(data):
    model = TinyCNN(num_classes=data.num_classes)
    torch.manual_seed(0)
    cfg = TrainLoopConfig(
        epochs=3,
        batch_size=32,
        optimizer=OptimizerConfig(name="sgd", lr=1e6, momentum=0.0),
        schedule=ScheduleConfig(name="constant"),
    )
    with pytest.raises(
        UserError,
        match=r"stages\[1\]\.finetune: training diverged \(loss is nan at epoch 1, step \d+\); "
        r"lower optimizer.lr \(now 1000000.0\)",
    ):
        fit(model, data.train, data.val, cfg, where="stages[1].finetune")


def test_batchnorm_recalibration_gives_true_statistics(data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    x = data.train.tensors[0][:128]
    seen = recalibrate_batchnorm(model, x, batches=4, batch_size=32)
    assert seen == 4
    with torch.no_grad():
        act = model[0](x)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, act.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training  # settings restored


def test_distillation_loss_matches_formula():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    t, a = 3.0, 0.7
    got = distillation_loss(teacher, t, a)(student, x, y)
    p_t = torch.softmax(teacher(x) / t, 1)
    log_p_s = torch.log_softmax(student(x) / t, 1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean()
    expected = a * t * t * kl + (1 - a) * nn.functional.cross_entropy(student(x), y)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-5)
