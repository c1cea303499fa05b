from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslim.config.schema import ModelSpec
from edgeslim.engine.store import TORCH, Artifact
from edgeslim.errors import UserError
from edgeslim.models.loader import ModelLoader
from edgeslim.stages.prune import attention_settings
from tests.conftest import make_context, stage_for


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "hessian"])
def test_prune_removes_channels_and_reloads_exactly(tmp_path, data, loader, trained, importance):
    stages = [{"prune": {"importance": importance, "pruning_ratio": 0.5, "calibration_samples": 64}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    d = result.details
    # Half the channels of both conv layers go: weights shrink to about a quarter.
    assert d["conv_channels"] == {"features.0.0": 8, "features.1.0": 16}
    assert d["params_after"] < 0.35 * d["params_before"]
    assert result.artifact.meta["params"] == d["params_after"]
    # The classifier is protected: still 10 outputs.
    model = loader.load(result.artifact)
    assert model.classifier.out_features == data.num_classes
    # Rebuilding from (architecture + pruning history + safetensors) reproduces the pruned model.
    again = loader.load(result.artifact)
    x = data.test.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert result.details["steps"][0]["val_accuracy_bn_recalibrated"] is not None
    assert result.details["channels_removed"] == 8 + 16
    assert not [n for n in result.notes if n.startswith("warning")]


def test_prune_to_params_target(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "l2", "target_params": 0.5}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    kept = result.details["params_kept"]
    assert 0.4 < kept <= 0.5


def test_iterative_pruning_reaches_the_same_ratio_in_steps(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "taylor", "pruning_ratio": 0.5, "iterative_steps": 3}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    params = [s["params"] for s in result.details["steps"]]
    assert len(params) == 3 and params[0] > params[1] > params[2]
    assert result.details["conv_channels"] == {"features.0.0": 8, "features.1.0": 16}


def test_prune_ignore_names_must_exist(tmp_path, data, loader, trained):
    stages = [{"prune": {"ignore": ["no.such.layer", "features.1.*"]}}]
    with pytest.raises(UserError) as error:
        stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    message = str(error.value)
    assert message.startswith("stages[0].prune.ignore: no module named or matching 'no.such.layer' in the model")
    assert "features.1.*" not in message  # the pattern that matches is not blamed
    assert "modules include " in message and "features.0.0" in message and "\n" not in message


def test_prune_ignore_takes_glob_patterns_and_records_what_each_matched(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "l2", "pruning_ratio": 0.5, "ignore": ["features.1.*", "features.0.0"]}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    assert result.details["ignore_matches"] == {
        "features.1.*": ["features.1.0", "features.1.1", "features.1.2"],
        "features.0.0": ["features.0.0"],
    }
    # Both convolutions stay whole: nothing else is prunable in tiny_cnn.
    assert result.details["conv_channels"] == {"features.0.0": 16, "features.1.0": 32}


def test_prune_ignore_pattern_leaves_only_the_matched_layers_whole(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "l2", "pruning_ratio": 0.5, "ignore": ["*.1.0"]}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    assert result.details["ignore_matches"] == {"*.1.0": ["features.1.0"]}
    assert result.details["conv_channels"] == {"features.0.0": 8, "features.1.0": 32}


def _prune(tmp_path, data, model_name: str, **settings):
    """Run the prune stage on a model class of this file, from its initial weights."""
    loader = ModelLoader(ModelSpec(name=f"{__name__}:{model_name}"), 1, data.num_classes, data.example_batch(2))
    stages = [{"prune": {"importance": "l2", "pruning_ratio": 0.5, **settings}}]
    source = Artifact(kind=TORCH, directory=None)
    return stage_for(stages).execute(make_context(tmp_path, data, loader, source, stages)), loader


def test_a_prune_that_removes_nothing_says_so_every_layer_left_whole(tmp_path, data, loader, trained):
    stages = [{"prune": {"importance": "l2", "ignore": ["features.*"]}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    assert result.details["params_after"] == result.details["params_before"]
    assert result.details["channels_removed"] == 0
    assert result.notes[-1] == (
        "warning: pruning removed nothing (0 channel(s)): every Conv/Linear layer is left whole: the classifier "
        "'classifier' is protected and ignore matched the other 2 (features.0.0, features.1.0)"
    )


class TiedToHead(nn.Module):
    """``fc``'s outputs are added to the classifier's: its channels are tied to the protected layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(64, num_classes)
        self.head = nn.Linear(num_classes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x.flatten(1))
        return self.head(torch.relu(h)) + h


def test_a_prune_that_removes_nothing_names_the_layer_that_ties_it(tmp_path, data):
    result, _ = _prune(tmp_path, data, "TiedToHead")
    assert result.details["params_after"] == result.details["params_before"]
    warning = result.notes[-1]
    assert warning.startswith("warning: pruning removed nothing (0 channel(s)): torch-pruning found no channel group")
    assert "ties the channels of 'fc' to head" in warning


class ReshapedHeads(nn.Module):
    """``fc``'s 32 outputs are reshaped into 4 heads of 8 by fixed numbers, which torch-pruning cannot see."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(64, 48)
        self.fc = nn.Linear(48, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.fc(torch.relu(self.stem(x.flatten(1))))
        return self.head(h.reshape(b, 4, 8).softmax(-1).reshape(b, 32))


class PerHeadLinear(nn.Module):
    """A Linear shared by 4 heads of 8 channels: torch-pruning's index mapping fails inside it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.per_head = nn.Linear(8, 8)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.head(torch.relu(self.per_head(self.fc(x.flatten(1)).reshape(b, 4, 8)).reshape(b, 32)))


@pytest.mark.parametrize(
    ("model_name", "message"),
    [
        (
            "ReshapedHeads",
            r"stages\[0\]\.prune: the pruned model no longer runs: RuntimeError: shape '\[2, 4, 8\]' is invalid for "
            r"input of size 32 \(in the model's own forward, after 'fc' ran\); .* stages\[0\]\.prune\.ignore "
            r"\(e\.g\. 'fc'\)$",
        ),
        (
            "PerHeadLinear",
            r"stages\[0\]\.prune: torch-pruning failed on the channels of fc: IndexError: .* stages\[0\]\.prune"
            r"\.ignore \(e\.g\. 'fc'\)$",
        ),
    ],
)
def test_a_layout_torch_pruning_cannot_follow_is_a_one_line_error_naming_the_layer(tmp_path, data, model_name, message):
    with pytest.raises(UserError, match=message) as error:
        _prune(tmp_path, data, model_name)
    assert "\n" not in str(error.value)


def test_following_the_advice_of_that_error_prunes_the_rest(tmp_path, data):
    result, loader = _prune(tmp_path, data, "ReshapedHeads", ignore=["fc"])
    model = loader.load(result.artifact)
    assert (model.stem.out_features, model.fc.in_features, model.fc.out_features) == (24, 24, 32)
    assert not [n for n in result.notes if n.startswith("warning")]


class MhaNet(nn.Module):
    """2x2 patches of an 8x8 digit -> 16 tokens of width 24 -> nn.MultiheadAttention (4 heads) -> classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 24, 2, 2)
        self.norm = nn.LayerNorm(24)
        self.attn = nn.MultiheadAttention(24, 4, batch_first=True)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        y = self.norm(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return self.head(x.mean(1))


def test_multihead_attention_keeps_its_embedding_divisible_by_its_heads(tmp_path, data):
    """Ratio 0.3 of 24 channels would leave 17, which 4 heads cannot split: the stage prunes in head groups."""
    loader = ModelLoader(ModelSpec(name=f"{__name__}:MhaNet"), 1, data.num_classes, data.example_batch(2))
    stages = [{"prune": {"importance": "l2", "pruning_ratio": 0.3}}]
    source = Artifact(kind=TORCH, directory=None)
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, source, stages))
    model = loader.load(result.artifact)  # rebuilt from its pruning history
    assert model.attn.embed_dim < 24 and model.attn.embed_dim % 4 == 0
    assert model.attn.head_dim * 4 == model.attn.embed_dim
    with torch.no_grad():
        assert model(data.test.tensors[0][:4]).shape == (4, data.num_classes)


def test_attention_settings_find_timm_style_and_torch_attention():
    from edgeslim.models.zoo import build_model

    vit = build_model("vit_tiny", {"image_size": 8, "patch_size": 2, "dim": 24, "depth": 2}, 1, 10)
    settings = attention_settings(vit)
    assert settings["num_heads"] == {block.attn.qkv: 3 for block in vit.blocks}
    mha = MhaNet()
    assert attention_settings(mha)["out_channel_groups"] == {mha.attn: 4}
