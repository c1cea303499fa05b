from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslim.errors import UserError
from edgeslim.models.zoo import TinyCNN
from edgeslim.train.loop import (
    OptimizerConfig,
    ScheduleConfig,
    TrainLoopConfig,
    fit,
    frozen_names,
    recalibrate_batchnorm,
)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_frozen_parameters_do_not_change(data):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes)
    before = snapshot(model)
    cfg = TrainLoopConfig(
        epochs=2,
        batch_size=32,
        freeze=["features.0.*"],
        freeze_first_layers=0,
        optimizer=OptimizerConfig(weight_decay=0.1),
        patience=None,
    )
    fit(model, data.train, data.val, cfg)
    after = snapshot(model)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (not name.startswith("features.0.")), name
    assert all(p.requires_grad for p in model.parameters())  # restored for later stages


def test_freeze_first_layers_and_gradual_unfreezing():
    model = TinyCNN()  # layers bottom-up: features.0.0, features.0.1, features.1.0, features.1.1, classifier
    cfg = TrainLoopConfig(freeze_first_layers=2)
    assert {n.rsplit(".", 1)[0] for n in frozen_names(model, cfg, 0)} == {"features.0.0", "features.0.1"}
    gradual = TrainLoopConfig(unfreeze_every=2)
    trainable = [
        sorted(
            {n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
            - {n.rsplit(".", 1)[0] for n in frozen_names(model, gradual, e)}
        )
        for e in range(4)
    ]
    assert trainable[0] == trainable[1] == ["classifier"]
    assert trainable[2] == trainable[3] == ["classifier", "features.1.1"]


def test_gradual_unfreezing_in_training(data):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes)
    states = [snapshot(model)]
    cfg = TrainLoopConfig(epochs=2, batch_size=64, unfreeze_every=1, patience=None)
    result = fit(model, data.train, data.val, cfg, on_epoch_end=lambda e, m: states.append(snapshot(m)))
    assert [h["frozen_tensors"] for h in result.history] == [6, 4]  # 8 tensors: head only, then features.1.1 (2)
    start, after_1, after_2 = states
    assert torch.equal(start["features.1.1.weight"], after_1["features.1.1.weight"])
    assert not torch.equal(start["classifier.weight"], after_1["classifier.weight"])
    assert not torch.equal(after_1["features.1.1.weight"], after_2["features.1.1.weight"])
    assert torch.equal(start["features.0.0.weight"], after_2["features.0.0.weight"])


def test_batch_size_schedule(data):
    cfg = TrainLoopConfig(epochs=4, batch_size=32, batch_size_schedule={1: 128, 3: 64}, patience=None)
    assert [cfg.batch_size_at(e) for e in range(4)] == [128, 128, 64, 64]
    result = fit(TinyCNN(num_classes=data.num_classes), data.train, data.val, cfg)
    assert [h["batch_size"] for h in result.history] == [128, 128, 64, 64]


def test_importance_scales_reach_the_optimizer(data):
    model = TinyCNN(num_classes=data.num_classes)
    scales = {"classifier.weight": 3.0, "features.0.0.weight": 0.5}
    cfg = TrainLoopConfig(epochs=1, batch_size=64, optimizer=OptimizerConfig(lr=0.01), layer_decay=0.5)
    result = fit(model, data.train, data.val, cfg, lr_scales=scales)
    assert result.initial_lrs["classifier.weight"] == pytest.approx(0.03)  # depth 0
    assert result.initial_lrs["features.0.0.weight"] == pytest.approx(0.01 * 0.5 * 0.5**4)  # depth 4
    assert result.initial_lrs["features.1.0.weight"] == pytest.approx(0.01 * 0.5**2)


def test_freeze_bn_statistics_in_last_epochs(data):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes)
    bn = model.features[0][1]
    seen = []
    cfg = TrainLoopConfig(epochs=3, batch_size=64, freeze_bn_last_epochs=1, patience=None)
    fit(model, data.train, data.val, cfg, on_epoch_end=lambda e, m: seen.append(bn.running_mean.clone()))
    assert not torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])


def test_dropout_override(data):
    from edgeslim.models.zoo import EdgeCNN

    model = EdgeCNN(width=8)
    fit(model, data.train, data.val, TrainLoopConfig(epochs=1, dropout=0.3))
    assert model.dropout.p == 0.3


def test_diverging_training_stops_with_a_clear_error(data):
    torch.manual_seed(0)
    model = TinyCNN(num_classes=data.num_classes)
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
    assert recalibrate_batchnorm(model, x, batches=4, batch_size=32) == 4
    with torch.no_grad():
        act = model[0](x)
    torch.testing.assert_close(model[1].running_mean, act.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training  # settings restored


def test_augmentation_is_training_only(data, monkeypatch):
    import edgeslim.train.loop as training

    calls = []
    real = training.augment_inputs
    monkeypatch.setattr(training, "augment_inputs", lambda x, c, g, *rest: calls.append(len(x)) or real(x, c, g, *rest))
    cfg = TrainLoopConfig(epochs=1, batch_size=64, augment={"shift": 1}, patience=None)
    fit(TinyCNN(num_classes=data.num_classes), data.train, data.val, cfg)
    assert sum(calls) == len(data.train)  # every training sample once; validation never
