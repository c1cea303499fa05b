"""Model artifacts: a pruned model is saved as weights + edit history (no pickles) and rebuilt exactly."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from edgeslim.config.schema import ModelSpec
from edgeslim.engine.store import TORCH
from edgeslim.errors import UserError
from edgeslim.models.loader import ModelLoader, count_params_and_macs, save_torch_artifact
from edgeslim.models.zoo import build_model


def test_a_pruned_model_round_trips_through_its_history(tmp_path, data):
    loader = ModelLoader(ModelSpec(name="tiny_cnn"), 1, data.num_classes, data.example_batch(2), seed=3)
    model = loader.source_model()
    example = data.example_batch(2)
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    params, macs = count_params_and_macs(model, example)
    artifact = save_torch_artifact(
        tmp_path, model, kind=TORCH, pruning_history=pruner.pruning_history(), params=params, macs=macs
    )
    assert {p.name for p in tmp_path.iterdir()} >= {"model.safetensors", "pruning_history.json"}
    rebuilt = loader.load(artifact)
    assert count_params_and_macs(rebuilt, example) == (params, macs)
    model.eval()
    x = data.test.tensors[0][:16]
    torch.testing.assert_close(rebuilt(x), model(x))


def test_the_initial_weights_are_a_function_of_the_seed(data):
    def first_weight(seed: int) -> torch.Tensor:
        loader = ModelLoader(ModelSpec(name="tiny_cnn"), 1, data.num_classes, data.example_batch(2), seed=seed)
        return next(loader.build().parameters()).detach()

    torch.manual_seed(123)  # the caller's RNG state does not matter
    assert torch.equal(first_weight(0), first_weight(0))
    assert not torch.equal(first_weight(0), first_weight(1))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_colon", r"^model\.name: 'no_colon' is not of the form package\.module:function$"),
        ("edgeslim_missing_mod:f", r"^model\.name: cannot import module 'edgeslim_missing_mod'"),
        ("math:pi", r"^model\.name: 'math:pi' is not callable$"),
        ("builtins:dict", r"^model\.name: factory 'builtins:dict' returned dict, not a torch\.nn\.Module$"),
    ],
)
def test_bad_factories_are_one_line_user_errors(name, message):
    with pytest.raises(UserError, match=message):
        build_model(name, {}, 1, 10)
