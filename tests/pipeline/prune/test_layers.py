from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.data.batches import call
from edgeslim.models import hf
from edgeslim.models.blocks import transformer_blocks
from edgeslim.prune.layers import apply_drop, block_container, drop_blocks, kept_blocks, skip_losses


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
