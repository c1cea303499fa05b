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


class DictOutputNet(torch.nn.Module):
    """Returns features beside the scores, as many real models do (and Hugging Face ModelOutputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x).mean((2, 3))
        return {"features": features, "logits": self.head(features)}


class TupleOutputNet(DictOutputNet):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        return out["features"], out["logits"]


def dict_output_net() -> torch.nn.Module:
    return DictOutputNet()


def tuple_output_net() -> torch.nn.Module:
    return TupleOutputNet()


def test_models_returning_dicts_or_tuples_are_reduced_to_their_scores(tmp_path, data) -> None:
    """``model.output`` picks the class scores (default: 'logits', else the first): every stage then
    trains, prunes and exports a classifier, and the pruned model is rebuilt from its history."""
    import edgeslim
    from tests.conftest import small_config

    example = data.example_batch(2)
    picked = ModelLoader(ModelSpec(name=f"{__name__}:dict_output_net"), 1, 10, example).source_model()
    assert picked(example).shape == (2, 10) and picked.key == "logits"
    second = ModelLoader(ModelSpec(name=f"{__name__}:tuple_output_net", output=1), 1, 10, example).source_model()
    assert second(example).shape == (2, 10)
    with pytest.raises(UserError, match=r"^model\.output: the model's outputs are named 'features', 'logits'"):
        ModelLoader(ModelSpec(name=f"{__name__}:dict_output_net", output="scores"), 1, 10, example).build()
    with pytest.raises(UserError, match=r"^model\.output: the model returns 2 outputs; give the index"):
        ModelLoader(ModelSpec(name=f"{__name__}:tuple_output_net", output=5), 1, 10, example).build()
    stages = [{"train": {"epochs": 2, "batch_size": 32}}, "baseline", {"prune": {"pruning_ratio": 0.5}}, "export"]
    cfg = small_config(stages, model={"name": f"{__name__}:dict_output_net"})
    result = edgeslim.run(cfg, out=tmp_path)
    assert [s.status for s in result.stages] == ["ran"] * 4
    assert result.stage("prune").metrics.params < result.stage("baseline").metrics.params
    assert result.stage("export").metrics.accuracy == result.stage("prune").metrics.accuracy
