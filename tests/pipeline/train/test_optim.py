from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from edgeslim.train.optim import (
    ImportanceLRConfig,
    OptimizerConfig,
    Plateau,
    ScheduleConfig,
    build_optimizer,
    build_param_groups,
    importance_map,
    importance_scales,
    layer_depths,
    lr_multiplier,
)


def toy() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("kind", ["linear", "sqrt", "log"])
@pytest.mark.parametrize("direction", ["boost", "protect"])
def test_group_lr_is_base_times_f_of_normalised_importance(kind, direction):
    model = toy()
    names = [n for n, _ in model.named_parameters()]
    # Known layer importances 1, 2, 3 (weights carry it, biases 0): mean 2 -> normalised 0.5, 1, 1.5.
    scores = {"0.weight": 1.0, "2.weight": 2.0, "4.weight": 3.0, "0.bias": 0.0, "2.bias": 0.0, "4.bias": 0.0}
    cfg = ImportanceLRConfig(granularity="layer", map=kind, direction=direction, min_scale=0.1, max_scale=10)
    scales = importance_scales(scores, cfg, names)
    groups = build_param_groups(model, OptimizerConfig(lr=0.01), scales)
    optimizer = build_optimizer(groups, OptimizerConfig(lr=0.01))
    for group in optimizer.param_groups:
        s = {"0": 0.5, "2": 1.0, "4": 1.5}[group["name"].split(".")[0]]
        f = importance_map(s, kind)
        expected = 0.01 * (f if direction == "boost" else 1 / f)
        assert group["lr"] == pytest.approx(expected)
    assert importance_map(1.0, kind) == pytest.approx(1.0)  # average importance keeps the base rate


def test_importance_scales_clip_and_apply_only_to_chosen_layers():
    model = toy()
    names = [n for n, _ in model.named_parameters()]
    scores = {"0.weight": 1.0, "2.weight": 100.0, "4.weight": 1.0}
    cfg = ImportanceLRConfig(granularity="tensor", map="linear", min_scale=0.5, max_scale=2.0, layers=["0", "2"])
    scales = importance_scales(scores, cfg, names)
    assert scales["2.weight"] == 2.0 and scales["0.weight"] == 0.5  # clipped (raw 100/50.5 and 1/50.5)
    assert scales["4.weight"] == 1.0 and scales["4.bias"] == 1.0  # the head trains at the plain rate


def test_layer_decay_by_depth_from_the_top():
    model = toy()
    assert layer_depths(model) == {"0": 2, "2": 1, "4": 0}
    groups = build_param_groups(model, OptimizerConfig(lr=1.0, weight_decay=0.1), layer_decay=0.5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["4.weight"]["lr"] == 1.0 and by_name["2.weight"]["lr"] == 0.5 and by_name["0.bias"]["lr"] == 0.25
    assert by_name["0.weight"]["weight_decay"] == 0.1 and by_name["0.bias"]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("rmsprop", torch.optim.RMSprop),
        ("adagrad", torch.optim.Adagrad),
    ],
)
def test_every_optimizer_builds_from_groups(name, cls):
    cfg = OptimizerConfig(name=name, lr=0.01, nesterov=True)
    optimizer = build_optimizer(build_param_groups(toy(), cfg), cfg)
    assert isinstance(optimizer, cls) and len(optimizer.param_groups) == 6
    if name == "sgd":
        assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    if name == "adam":
        assert optimizer.defaults["decoupled_weight_decay"] is True


def curve(cfg: ScheduleConfig, steps: int = 10, epochs: int = 5) -> list[float]:
    return [lr_multiplier(cfg, e, s, steps, epochs) for e in range(epochs) for s in range(steps)]


def test_cosine_with_warmup_and_floor():
    c = curve(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1))
    assert c[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up over one epoch
    assert c[10] == pytest.approx(1.0)
    assert c[30] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine part
    assert all(a >= b for a, b in itertools.pairwise(c[10:]))
    assert lr_multiplier(ScheduleConfig(name="cosine", min_lr_ratio=0.1), 5, 0, 10, 5) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("cfg", "per_epoch_start"),
    [
        (ScheduleConfig(name="constant"), [1, 1, 1, 1, 1]),
        (ScheduleConfig(name="step", gamma=0.5, step_epochs=2), [1, 1, 0.5, 0.5, 0.25]),
        (ScheduleConfig(name="exponential", gamma=0.5), [1, 0.5, 0.25, 0.125, 0.0625]),
        (ScheduleConfig(name="constant", warmup_epochs=2), [0.05, 0.55, 1, 1, 1]),
    ],
)
def test_schedules_per_epoch(cfg, per_epoch_start):
    c = curve(cfg)
    assert [c[e * 10] for e in range(5)] == pytest.approx(per_epoch_start)


def test_exponential_is_smooth_within_an_epoch():
    c = curve(ScheduleConfig(name="exponential", gamma=0.5))
    assert c[5] == pytest.approx(0.5**0.5)


def test_reduce_on_plateau():
    plateau = Plateau(ScheduleConfig(name="plateau", gamma=0.1, plateau_patience=2))
    factors = []
    for metric in [0.5, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7, 0.7]:
        plateau.update(metric)
        factors.append(plateau.factor)
    assert factors == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert math.isclose(curve(ScheduleConfig(name="plateau"))[17], 1.0)


def test_layer_decay_in_a_transformer_goes_by_block_from_the_head_down():
    """BERT fine-tuning's layer-wise decay: head 0, the last block 1, ..., embeddings deepest."""
    from tests.stages.test_prune_attention import TinyBert

    model = TinyBert(in_channels=100)  # 2 encoder blocks
    depths = layer_depths(model)
    assert depths["bert.classifier"] == 0 and depths["bert.bert.pooler.dense"] == 0
    assert depths["bert.bert.encoder.layer.1.attention.self.query"] == 1
    assert depths["bert.bert.encoder.layer.1.output.dense"] == 1
    assert depths["bert.bert.encoder.layer.0.intermediate.dense"] == 2
    assert depths["bert.bert.embeddings.word_embeddings"] == depths["bert.bert.embeddings.LayerNorm"] == 3
    groups = build_param_groups(model, OptimizerConfig(lr=1.0), layer_decay=0.5)
    lrs = {g["params"][0].data_ptr(): g["lr"] for g in groups}
    embeddings = model.bert.bert.embeddings.word_embeddings.weight
    assert lrs[embeddings.data_ptr()] == 0.125 and lrs[model.bert.classifier.weight.data_ptr()] == 1.0


def test_linear_schedule_warms_up_then_decays_linearly_to_the_floor():
    cfg = ScheduleConfig(name="linear", warmup_epochs=1.0, min_lr_ratio=0.0)
    assert lr_multiplier(cfg, 0, 4, 10, 3) == pytest.approx(0.5)  # warm-up
    assert lr_multiplier(cfg, 1, 0, 10, 3) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 2, 0, 10, 3) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 2, 9, 10, 3) == pytest.approx(0.05)
