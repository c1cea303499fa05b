from __future__ import annotations

import torch

from edgeslim.api import parse_config
from edgeslim.engine.store import TORCH, TORCH_QAT
from edgeslim.quant import qat
from edgeslim.train.loop import evaluate
from tests.conftest import make_context, plan_for, small_config, stage_for


def _pruned(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "l2", "pruning_ratio": 0.5}}]
    return stage_for(stages).execute(make_context(tmp_path / "p", data, loader, trained, stages)).artifact


def test_finetune_with_distillation_recovers_accuracy(tmp_path, data, loader, trained):
    pruned = _pruned(tmp_path, data, loader, trained)
    before, _ = evaluate(loader.load(pruned), data.val)
    stages = ["baseline", {"finetune": {"epochs": 4, "batch_size": 32, "distill": {"teacher": "baseline"}}}]
    ctx = make_context(tmp_path, data, loader, pruned, stages, index=1, earlier={0: trained})
    result = stage_for(stages, 1).execute(ctx)
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
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, pruned, stages))
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


def test_importance_scaled_lr_and_ensemble_with_hint(tmp_path, data, loader, trained):
    from safetensors.torch import save_file

    pruned = _pruned(tmp_path, data, loader, trained)
    second_teacher = tmp_path / "teacher2.safetensors"
    save_file({k: v.contiguous() for k, v in loader.load(trained).state_dict().items()}, str(second_teacher))
    stages = [
        "baseline",
        {
            "finetune": {
                "epochs": 2,
                "batch_size": 32,
                "importance_lr": {
                    "criterion": "hessian_trace",
                    "direction": "protect",
                    "hutchinson_samples": 2,
                    "calibration_samples": 64,
                    "layers": ["features.*"],
                },
                "distill": {"teacher": ["baseline", str(second_teacher)], "hint": {"layer": "features.1"}},
                "augment": {"shift": 1},
                "loss": {"label_smoothing": 0.1},
            }
        },
    ]
    stage = stage_for(stages, 1)
    assert plan_for(stages, TORCH, 1).input_files == (second_teacher,)
    result = stage.execute(make_context(tmp_path, data, loader, pruned, stages, index=1, earlier={0: trained}))
    scales = result.details["lr_scales"]
    assert scales["classifier.weight"] == 1.0  # outside layers: plain rate
    assert any(v != 1.0 for k, v in scales.items() if k.startswith("features"))
    assert any("distilled from baseline + " in n for n in result.notes)
    assert any("hint loss on features.1" in n for n in result.notes)
    assert result.details["best_val_accuracy"] > 0.1


def test_invalid_finetune_combinations_are_config_errors():
    import pytest

    from edgeslim.errors import UserError

    with pytest.raises(UserError, match=r"stages\[0\]\.finetune: .*hint cannot be combined with qat"):
        parse_config(small_config([{"finetune": {"qat": True, "distill": {"hint": {"layer": "features.1"}}}}]))
    with pytest.raises(UserError, match=r"stages\[0\]\.finetune\.importance_lr: .*min_scale \(3\.0\) must be <= "):
        parse_config(small_config([{"finetune": {"importance_lr": {"min_scale": 3.0}}}]))
    with pytest.raises(UserError, match=r"importance_lr\.criterion: Input should be 'weight_l1', 'weight_l2', "):
        parse_config(small_config([{"finetune": {"importance_lr": {"criterion": "random"}}}]))
    with pytest.raises(UserError, match=r"finetune\.distill\.layers: .*hidden and attention are both 0"):
        parse_config(small_config([{"finetune": {"distill": {"layers": {"hidden": 0, "attention": 0}}}}]))
    with pytest.raises(UserError, match=r"finetune: .*distill\.layers cannot be combined with qat"):
        parse_config(small_config([{"finetune": {"qat": True, "distill": {"layers": {}}}}]))


def test_layer_distillation_on_a_model_without_transformer_blocks_is_a_one_line_error(tmp_path, data, loader, trained):
    import pytest

    from edgeslim.errors import UserError

    stages = ["baseline", {"finetune": {"epochs": 1, "distill": {"teacher": "baseline", "layers": {}}}}]
    ctx = make_context(tmp_path, data, loader, trained, stages, index=1, earlier={0: trained})
    with pytest.raises(UserError, match=r"finetune\.distill\.layers: no transformer blocks found in the model"):
        stage_for(stages, 1).execute(ctx)


def test_new_head_adapts_a_model_to_another_task(tmp_path, trained, run_config):
    from edgeslim.config.schema import ModelSpec
    from edgeslim.data.datasets import DataSplits
    from edgeslim.models.loader import ModelLoader
    from tests.helpers.factories import digits_parity

    train, val, test = digits_parity()
    parity = DataSplits(train, val, test, num_classes=2, fingerprint="parity")
    spec = ModelSpec(name="tiny_cnn", kwargs={"num_classes": 10})  # the original 10-class architecture
    loader = ModelLoader(spec, 1, 2, train.tensors[0][:2], allow_other_classes=True)
    stages = [{"finetune": {"epochs": 3, "batch_size": 32, "head": {"hidden": [16]}, "optimizer": {"lr": 0.003}}}]
    stage = stage_for(stages)
    assert plan_for(stages, TORCH).changes_classes
    result = stage.execute(make_context(tmp_path, parity, loader, trained, stages))
    model = loader.load(result.artifact)  # replays the head edit
    assert isinstance(model.classifier, torch.nn.Sequential)
    assert model.classifier[0].out_features == 16 and model.classifier[-1].out_features == 2
    acc, _ = evaluate(model, parity.test)
    assert acc == result.details["torch_test_accuracy"] and acc > 0.7
    assert any("new head on classifier" in n for n in result.notes)
