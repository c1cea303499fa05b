from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.data.batches import call
from edgeslim.models import hf
from edgeslim.models.architectures import MobileNetV3Small, ResNet18
from edgeslim.models.blocks import transformer_blocks
from edgeslim.prune.layers import (
    apply_drop,
    apply_drop_blocks,
    block_container,
    drop_blocks,
    drop_skippable,
    greedy_drop,
    kept_blocks,
    skip_losses,
    skippable_blocks,
)


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


class _Blocks(nn.Module):
    """Four residual blocks; block 2 adds nothing (zero weights), so dropping it is free."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(_Residual(8) for _ in range(4))
        nn.init.zeros_(self.blocks[2].linear.weight)
        nn.init.zeros_(self.blocks[2].linear.bias)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_greedy_drop_scores_the_rest_again_after_each_drop() -> None:
    """Absences interact: "b" alone is cheap, but once "a" is gone "b" carries the signal and "c" goes."""
    gone: list[str] = []
    cost = {"a": 1.0, "b": 2.0, "c": 3.0}

    def loss_without(key: str) -> float:
        return 10.0 if key == "b" and "a" in gone else cost[key]

    steps = greedy_drop(2, lambda: [k for k in cost if k not in gone], loss_without, gone.append)
    assert gone == ["a", "c"]
    assert steps[0] == ("a", {"a": 1.0, "b": 2.0, "c": 3.0})
    assert steps[1] == ("c", {"b": 10.0, "c": 3.0})


def test_the_block_whose_absence_costs_least_is_dropped_and_replayed() -> None:
    model = _Blocks()
    x = torch.randn(64, 8)
    before = call(model, x)
    y = before.argmax(1)  # the labels the full model gets right: any real block's absence costs
    losses = skip_losses(model, model.blocks, x, y, F.cross_entropy)
    assert losses[2] == pytest.approx(F.cross_entropy(before, y).item(), abs=1e-6)  # the no-op block
    assert all(loss != losses[2] for i, loss in enumerate(losses) if i != 2)
    edit = drop_blocks(model, 1, x, y, F.cross_entropy)["drop_layers"]
    assert (edit["container"], edit["indices"], edit["kept"]) == ("blocks", [2], [0, 1, 3])
    assert len(model.blocks) == 3
    torch.testing.assert_close(call(model, x), before)  # dropping the no-op changes nothing
    fresh = _Blocks()
    apply_drop(fresh, edit)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(call(fresh, x), before)
    assert kept_blocks([{"drop_layers": edit}]) == [0, 1, 3]
    assert kept_blocks([{"drop_layers": edit}, {"drop_layers": {"kept": [0, 2]}}]) == [0, 3]  # two prunes
    assert kept_blocks([["a list entry from torch-pruning"]]) is None
    with pytest.raises(ValueError, match="cannot drop 3 of 3 blocks"):
        drop_blocks(model, 3, x, y, F.cross_entropy)
    with pytest.raises(ValueError, match="no transformer blocks found"):
        block_container(nn.Sequential(nn.Linear(2, 2)))


def test_a_bert_loses_a_block_and_still_runs(tiny_bert: Path) -> None:
    model = hf.load(tiny_bert, "sequence-classification", 2).eval()
    ids = torch.randint(1000, 2000, (4, 10))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    edit = drop_blocks(model, 1, x, torch.tensor([0, 1, 0, 1]), F.cross_entropy)["drop_layers"]
    assert edit["container"] == "hf.bert.encoder.layer" and len(edit["kept"]) == 1
    assert len(transformer_blocks(model)) == 1 and model.hf.config.num_hidden_layers == 1
    assert call(model, x).shape == (4, 2)


def test_a_cnn_without_attention_skips_its_residual_blocks_by_measurement_and_replays_it() -> None:
    torch.manual_seed(0)
    model = ResNet18(in_channels=1, num_classes=4, width_mult=0.125).eval()
    example = torch.randn(1, 1, 16, 16)
    # the blocks whose output has their input's shape: not the downsampling first blocks of stages 2-4
    assert skippable_blocks(model, example) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    x = torch.randn(32, 1, 16, 16)
    y = call(model, x).argmax(1)
    edit = drop_skippable(model, 2, example, x, y, F.cross_entropy)["drop_blocks"]
    assert len(edit["blocks"]) == 2 and len(set(edit["blocks"])) == 2
    first = edit["scores"][0]
    assert first["block"] == min(first["losses"], key=first["losses"].get)  # the cheapest absence went first
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in edit["blocks"])
    assert skippable_blocks(model, example) == [
        n for n in ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"] if n not in edit["blocks"]
    ]
    fresh = ResNet18(in_channels=1, num_classes=4, width_mult=0.125).eval()
    apply_drop_blocks(fresh, edit)
    fresh.load_state_dict(model.state_dict())  # the same parameters: nothing but the dropped blocks is missing
    torch.testing.assert_close(call(fresh, x), call(model, x))
    with pytest.raises(ValueError, match="cannot drop 9 blocks: only 3 can be skipped"):
        drop_skippable(fresh, 9, example, x, y, F.cross_entropy)


def test_by_latency_a_block_that_saves_more_goes_first_though_its_absence_costs_more_loss() -> None:
    torch.manual_seed(0)
    model = ResNet18(in_channels=1, num_classes=4, width_mult=0.125).eval()
    example = torch.randn(1, 1, 16, 16)
    x = torch.randn(32, 1, 16, 16)
    y = call(model, x).detach()  # the distance to the whole model's outputs: every real absence raises it
    by_loss = drop_skippable(copy.deepcopy(model), 1, example, x, y, F.mse_loss)["drop_blocks"]
    losses = by_loss["scores"][0]["losses"]
    cheapest, dearer = sorted(losses, key=losses.get)[:2]
    assert by_loss["blocks"] == [cheapest] and losses[cheapest] > 0
    # the dearer absence saves 1000x the time: per millisecond it is the cheaper drop
    savings = dict.fromkeys(losses, 0.001) | {dearer: 1.0}
    by_ms = drop_skippable(copy.deepcopy(model), 1, example, x, y, F.mse_loss, savings)["drop_blocks"]
    assert by_ms["blocks"] == [dearer]
    scores = by_ms["scores"][0]["losses"]
    assert scores[dearer] == pytest.approx(losses[dearer] / 1.0, rel=1e-4)  # the base loss is 0
    assert scores[cheapest] == pytest.approx(losses[cheapest] / 0.001, rel=1e-4)
    assert set(by_ms["scores"][0]) == {"block", "loss_increase_per_ms", "losses"}


def test_a_mobilenet_offers_its_residual_blocks_and_squeeze_excitations() -> None:
    model = MobileNetV3Small(in_channels=1, num_classes=4, width_mult=0.25).eval()
    names = skippable_blocks(model, torch.randn(1, 1, 32, 32))
    residual = [f"features.{i}" for i, b in enumerate(model.features) if getattr(b, "use_residual", False)]
    assert residual and set(residual) <= set(names)
    squeeze = [n for n, m in model.named_modules() if type(m).__name__ == "SqueezeExcitation"]
    assert squeeze and set(squeeze) <= set(names)
    assert "features.1" not in names  # stride 2: its output is not its input's shape
