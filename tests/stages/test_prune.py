from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
from torch import nn

from edgeslim.config.schema import ModelSpec
from edgeslim.engine.store import ONNX, TORCH, Artifact
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
        "'classifier' is protected and ignore matched 2 (features.0.0, features.1.0)"
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


class TimmAttention(nn.Module):
    """timm's layout: ``qkv`` reshaped with a stored ``head_dim`` (the reshape in the ViT crash of issue 13)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """2x2 patches of an 8x8 digit, a class token and a learned position embedding as bare ``nn.Parameter``s
    on the model, two timm-style blocks, the class token's output to the head."""

    def __init__(self, num_classes: int = 10, dim: int = 24, transposed_pos: bool = False) -> None:
        super().__init__()
        self.transposed_pos = transposed_pos
        self.patch_embed = nn.Conv2d(1, dim, 2, 2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        shape = (1, dim, 17) if transposed_pos else (1, 17, dim)
        self.pos_embed = nn.Parameter(torch.randn(*shape) * 0.02)
        self.blocks = nn.Sequential(TimmBlock(dim, 3), TimmBlock(dim, 3))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        pos = self.pos_embed.transpose(1, 2) if self.transposed_pos else self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def _prune_then_export(tmp_path, data, loader):
    stages = [{"prune": {"importance": "l2", "pruning_ratio": 0.5}}, "export"]
    source = Artifact(kind=TORCH, directory=None)
    pruned = stage_for(stages).execute(make_context(tmp_path / "prune", data, loader, source, stages))
    ctx = make_context(tmp_path / "export", data, loader, pruned.artifact, stages, 1)
    return pruned, stage_for(stages, 1).execute(ctx)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(f"{__name__}:SmallViT", {}), ("vit_tiny", {"image_size": 8, "patch_size": 2, "dim": 24, "depth": 2})],
)
def test_vit_class_token_and_position_embedding_shrink_with_the_embedding_then_export(tmp_path, data, name, kwargs):
    loader = ModelLoader(ModelSpec(name=name, kwargs=kwargs), 1, data.num_classes, data.example_batch(2))
    pruned, exported = _prune_then_export(tmp_path, data, loader)
    assert pruned.details["unwrapped_parameters"] == {"cls_token": 2, "pos_embed": 2}
    assert pruned.details["params_after"] < 0.5 * pruned.details["params_before"]
    model = loader.load(pruned.artifact)  # rebuilt from its pruning history
    width = model.patch_embed.out_channels
    assert width < 24 and model.cls_token.shape == (1, 1, width) and model.pos_embed.shape == (1, 17, width)
    for block in model.blocks:  # head dimensions removed evenly across the 3 heads
        assert block.attn.qkv.out_features % 9 == 0 and block.attn.qkv.out_features < 72
        if hasattr(block.attn, "head_dim"):
            assert block.attn.head_dim * 9 == block.attn.qkv.out_features
    assert exported.artifact.kind == ONNX
    assert exported.details["parity"]["top1_agreement"] == 1.0


def test_a_bare_parameter_laid_out_across_its_channels_keeps_those_layers_whole_with_a_note(tmp_path, data):
    """``pos_embed`` stored as [1, width, tokens] and used transposed: its last dim is not the embedding, so
    the embedding stays whole (with a note) while the attention and MLP widths are still pruned."""
    spec = ModelSpec(name=f"{__name__}:SmallViT", kwargs={"transposed_pos": True})
    loader = ModelLoader(spec, 1, data.num_classes, data.example_batch(2))
    pruned, exported = _prune_then_export(tmp_path, data, loader)
    assert pruned.details["unwrapped_conflicts"] == {
        "pos_embed": ["patch_embed", "blocks.0.attn.proj", "blocks.0.mlp.2", "blocks.1.attn.proj", "blocks.1.mlp.2"]
    }
    assert any(n.startswith("left the output channels of patch_embed, blocks.0.attn.proj") for n in pruned.notes)
    model = loader.load(pruned.artifact)
    assert model.patch_embed.out_channels == 24 and model.pos_embed.shape == (1, 24, 17)
    assert model.blocks[0].mlp[0].out_features < 48 and model.blocks[0].attn.head_dim < 8
    assert exported.details["parity"]["top1_agreement"] == 1.0


class WithSpareLayers(nn.Module):
    """``spare`` is never called; ``pooler`` runs on the features but its output is dropped, like a Hugging
    Face pooler that a classification head on the token states ignores."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.spare = nn.Linear(32, 32)
        self.pooler = nn.Sequential(nn.Linear(32, 32), nn.Tanh())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        self.pooler(features)  # computed, never used for the answer
        return self.head(features)


def test_modules_the_output_does_not_use_are_left_out_with_a_note_and_the_rest_prunes_then_exports(tmp_path, data):
    loader = ModelLoader(ModelSpec(name=f"{__name__}:WithSpareLayers"), 1, data.num_classes, data.example_batch(2))
    pruned, exported = _prune_then_export(tmp_path, data, loader)
    assert pruned.details["unused_modules"] == {"never_called": ["spare"], "dead": ["pooler.0"]}
    assert (
        "left spare out of pruning: never used by the forward pass, yet 1,056 parameters that stay in the model "
        "(delete them from it to save that size)"
    ) in pruned.notes
    assert any(n.startswith("left the outputs of pooler.0 whole: they run, but") for n in pruned.notes)
    model = loader.load(pruned.artifact)  # rebuilt from its pruning history: the pooler's input shrank too
    assert model.body[3].out_features == 16 and model.pooler[0].in_features == 16
    assert (model.pooler[0].out_features, model.spare.in_features, model.spare.out_features) == (32, 32, 32)
    assert exported.details["parity"]["top1_agreement"] == 1.0


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


def test_a_resnet_drops_whole_residual_blocks_then_prunes_channels_and_exports(tmp_path, data):
    """``drop_layers`` on a model without attention: residual blocks replaced by the identity (chosen by
    the calibration loss), then channel pruning; later stages rebuild the shorter model from the history."""
    spec = ModelSpec(name="resnet18", kwargs={"width_mult": 0.125})
    loader = ModelLoader(spec, 1, data.num_classes, data.example_batch(2))
    stages = [{"prune": {"importance": "l1", "pruning_ratio": 0.5, "drop_layers": 2}}, "export"]
    source = Artifact(kind=TORCH, directory=None)
    pruned = stage_for(stages).execute(make_context(tmp_path / "prune", data, loader, source, stages))
    dropped = pruned.details["drop_layers"]
    assert len(dropped["blocks"]) == 2 and set(dropped["blocks"]) <= {
        "layer1.0",
        "layer1.1",
        "layer2.1",
        "layer3.1",
        "layer4.1",
    }
    assert any("by the identity" in note for note in pruned.notes)
    model = loader.load(pruned.artifact)  # rebuilt from its history: the blocks gone, the channels pruned
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in dropped["blocks"])
    assert model.layer4[0].conv1.out_channels < 64
    exported = stage_for(stages, 1).execute(make_context(tmp_path / "export", data, loader, pruned.artifact, stages, 1))
    assert exported.details["parity"]["top1_agreement"] == 1.0


def test_by_latency_a_resnet_times_each_skippable_block_once_and_drops_by_loss_per_millisecond(tmp_path, data):
    """``drop_by: loss_per_ms``: every skippable block's absence timed side by side with the whole model
    (host cache: a second prune of the same structure reads it), the drop ranked by loss increase per ms."""
    spec = ModelSpec(name="resnet18", kwargs={"width_mult": 0.125})
    loader = ModelLoader(spec, 1, data.num_classes, data.example_batch(2))
    stages = [{"prune": {"importance": "l1", "pruning_ratio": 0.25, "drop_layers": 1, "drop_by": "loss_per_ms"}}]
    source = Artifact(kind=TORCH, directory=None)
    pruned = stage_for(stages).execute(make_context(tmp_path / "a", data, loader, source, stages))
    dropped = pruned.details["drop_layers"]
    blocks = ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert sorted(dropped["savings_ms"]) == blocks
    step = dropped["skip_losses"][0]
    assert dropped["blocks"] == [step["block"]] == [min(step["losses"], key=step["losses"].get)]
    assert step["loss_increase_per_ms"] == step["losses"][step["block"]]
    with patch("edgeslim.prune.latency.measure_side_by_side", side_effect=AssertionError("timed again")):
        again = stage_for(stages).execute(make_context(tmp_path / "b", data, loader, source, stages))
    assert again.details["drop_layers"]["savings_ms"] == dropped["savings_ms"]
