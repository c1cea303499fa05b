from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeslim.data.batches import call
from edgeslim.models import hf
from edgeslim.models.blocks import transformer_blocks
from edgeslim.train.layer_distill import (
    LayerDistiller,
    attention_loss,
    attention_outputs,
    uniform_mapping,
)
from edgeslim.train.losses import LossConfig, compose_loss


def _bert(folder: Path, **config: int) -> nn.Module:
    """The tiny BERT (2 layers, hidden 32, 4 heads), or one built from its config with changes."""
    from transformers import BertConfig, BertForSequenceClassification

    if not config:
        return hf.load(folder, "sequence-classification", 2)
    torch.manual_seed(1)
    base = BertConfig.from_pretrained(str(folder)).to_dict() | config | {"num_labels": 2}
    return hf.TokenClassifier(BertForSequenceClassification(BertConfig(**base)), pad_id=0)


def _batch(n: int = 8, length: int = 12) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (n, length))
    mask = torch.ones(n, length, dtype=torch.long)
    mask[: n // 2, length // 2 :] = 0  # half the samples padded
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_blocks_are_found_in_order_and_mapped_uniformly(tiny_bert: Path) -> None:
    blocks = transformer_blocks(_bert(tiny_bert))
    assert [name for name, _ in blocks] == ["hf.bert.encoder.layer.0", "hf.bert.encoder.layer.1"]
    assert uniform_mapping(2, 2) == {0: 0, 1: 1}
    assert uniform_mapping(3, 6) == {0: 1, 1: 3, 2: 5}
    assert uniform_mapping(4, 6) == {0: 1, 1: 2, 2: 4, 3: 5}  # the last learns from the last
    assert transformer_blocks(nn.Sequential(nn.Linear(2, 2))) == []


def test_attention_maps_are_returned_only_inside_the_context(tiny_bert: Path) -> None:
    model = _bert(tiny_bert).eval()
    distiller = LayerDistiller(model, model, 0.0, 1.0, {0: 0, 1: 1})
    x = _batch()
    with attention_outputs(model):
        call(model, x)
        maps = dict(distiller._student_taps.attention)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {0: (8, 4, 12, 12), 1: (8, 4, 12, 12)}
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(8, 4, 12))  # probabilities, eval mode
    assert model.hf.config.output_attentions is False  # restored
    distiller._student_taps.clear()
    call(model, x)
    assert distiller._student_taps.attention == {} and len(distiller._student_taps.hidden) == 2
    distiller.remove()


def test_attention_loss_is_zero_for_equal_maps_and_ignores_padding_queries() -> None:
    torch.manual_seed(0)
    t = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    assert attention_loss(t, t, None).item() == pytest.approx(0.0, abs=1e-6)
    s = t.clone()
    s[:, :, 3:] = torch.softmax(torch.randn(2, 4, 2, 5), -1)  # differs only on query rows 3 and 4
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert attention_loss(s, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_loss(s, t, None).item() > 1e-3
    # head-averaged: a student with fewer heads compares the same way
    assert attention_loss(t[:, :2], t[:, :2], mask).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("width", [32, 24])
def test_layer_distillation_loss_decreases(tiny_bert: Path, width: int) -> None:
    """A student with fewer heads (and, second case, a narrower hidden size behind adapters) learns
    its teacher's hidden states and attention maps: the layer loss falls under training."""
    teacher = _bert(tiny_bert).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = _bert(tiny_bert, num_attention_heads=2, hidden_size=width, intermediate_size=48)
    distiller = LayerDistiller(student, teacher, 1.0, 1.0, uniform_mapping(2, 2))
    x, y = _batch(), torch.tensor([0, 1] * 4)
    with attention_outputs(student, teacher):
        distiller.fit_adapters(x, call)
        assert len(distiller.adapters) == (0 if width == 32 else 2)
        student.train()
        params = list(student.parameters()) + list(distiller.adapters.parameters())
        opt = torch.optim.Adam(params, lr=3e-3)
        loss_fn = compose_loss(LossConfig(), teachers=[teacher], alpha=0.0, layers=distiller)
        losses = []
        for _ in range(40):
            call(student, x)
            call(teacher, x)
            loss = distiller.loss(x)
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        total = loss_fn(student, x, y)  # compose_loss adds the layer term to the task loss
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert total.item() > 0
    distiller.remove()


def test_missing_attention_maps_are_reported(tiny_bert: Path) -> None:
    model = _bert(tiny_bert).eval()
    distiller = LayerDistiller(model, model, 1.0, 1.0, {0: 0})
    with pytest.raises(ValueError, match="no attention probabilities"):
        distiller.fit_adapters(_batch(), call)  # outside attention_outputs: blocks return none
    distiller.remove()
