from __future__ import annotations

import torch

from pipeline import qat
from pipeline.artifacts import TORCH, TORCH_QAT
from pipeline.training import evaluate
from tests.conftest import make_context, stage_for


def _pruned(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "l2", "pruning_ratio": 0.5}}]
    return stage_for(stages).run(make_context(tmp_path / "p", data, loader, trained, stages)).artifact


def test_finetune_with_distillation_recovers_accuracy(tmp_path, data, loader, trained):
    pruned = _pruned(tmp_path, data, loader, trained)
    before, _ = evaluate(loader.load(pruned), data.val)
    stages = ["baseline", {"finetune": {"epochs": 4, "batch_size": 32, "distill": {"teacher": "baseline"}}}]
    ctx = make_context(tmp_path, data, loader, pruned, stages, index=1, earlier={0: trained})
    result = stage_for(stages, 1).run(ctx)
    assert result.artifact.kind == TORCH
    assert result.details["best_val_accuracy"] >= before
    assert result.details["best_val_accuracy"] == max(e["val_accuracy"] for e in result.details["epochs"])
    # The best epoch's weights were restored: reloaded validation accuracy equals the best.
    val_acc, _ = evaluate(loader.load(result.artifact), data.val)
    assert abs(val_acc - result.details["best_val_accuracy"]) < 1e-9
    assert any("distilled" in n for n in result.notes)


def test_qat_finetune_produces_fake_quant_model_that_reloads_and_converts(tmp_path, data, loader, trained):
    pruned = _pruned(tmp_path, data, loader, trained)
    stages = [{"finetune": {"epochs": 2, "batch_size": 32, "qat": True}}]
    result = stage_for(stages).run(make_context(tmp_path, data, loader, pruned, stages))
    assert result.artifact.kind == TORCH_QAT
    model = loader.load(result.artifact)
    assert qat.is_graph_module(model)
    assert any(hasattr(m, "observer_enabled") for m in model.modules())  # fake quantization inserted
    acc, _ = evaluate(model, data.test)
    assert abs(acc - result.details["torch_test_accuracy"]) < 1e-9  # reload is exact
    converted = qat.convert(loader.load(result.artifact))
    x = data.test.tensors[0]
    with torch.no_grad():
        agree = (converted(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree > 0.95
