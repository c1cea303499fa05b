"""The prune stage on Hugging Face BERT attention (separate query/key/value, heads reshaped with
``num_attention_heads``/``attention_head_size``) and whole-head removal (``head_pruning_ratio``), on
real token ids: prune, run, export to ONNX, rebuild from the pruning history."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from edgeslim.config.schema import ModelSpec
from edgeslim.data.datasets import DataSplits
from edgeslim.engine.store import ONNX, TORCH, Artifact
from edgeslim.errors import UserError
from edgeslim.models.loader import ModelLoader
from edgeslim.stages.prune import attention_settings
from tests.conftest import make_context, stage_for

transformers = pytest.importorskip("transformers")


class TinyBert(nn.Module):
    """A 2-layer ``BertForSequenceClassification`` from a config (no download), wrapped as a user's own
    module: named ``input_ids``/``attention_mask`` inputs (the mask derived from the padding id when absent)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 30522, pad_id: int = 0) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=in_channels,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            num_labels=num_classes,
            pad_token_id=pad_id,
        )
        self.bert = transformers.BertForSequenceClassification(config)
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_id).long()
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits


def _prune_then_export(tmp_path, data: DataSplits, loader: ModelLoader, **settings):
    stages = [{"prune": {"importance": "l2", **settings}}, "export"]
    source = Artifact(kind=TORCH, directory=None)
    pruned = stage_for(stages).execute(make_context(tmp_path / "prune", data, loader, source, stages))
    ctx = make_context(tmp_path / "export", data, loader, pruned.artifact, stages, 1)
    return pruned, stage_for(stages, 1).execute(ctx)


def _bert_loader(data: DataSplits) -> ModelLoader:
    spec = ModelSpec(name=f"{__name__}:TinyBert", kwargs={"in_channels": 30522})
    return ModelLoader(spec, 30522, data.num_classes, data.example_batch(2))


def _attention(model: nn.Module) -> list[nn.Module]:
    return [layer.attention.self for layer in model.bert.bert.encoder.layer]


@pytest.mark.parametrize(("settings", "heads"), [({}, 4), ({"head_pruning_ratio": 0.5}, 2)])
def test_bert_attention_prunes_runs_exports_and_rebuilds(tmp_path, reviews, settings, heads):
    loader = _bert_loader(reviews)
    pruned, exported = _prune_then_export(tmp_path, reviews, loader, **settings)
    d = pruned.details
    assert d["params_after"] < d["params_before"] and not [n for n in pruned.notes if n.startswith("warning")]
    model = loader.load(pruned.artifact)  # rebuilt from its pruning history
    assert model.bert.config.hidden_size == 64  # the config keeps its numbers: only the modules shrink
    hidden = model.bert.bert.embeddings.word_embeddings.embedding_dim
    assert hidden < 64 and model.bert.classifier.in_features == hidden
    for layer, attn in zip(model.bert.bert.encoder.layer, _attention(model), strict=True):
        assert attn.num_attention_heads == heads
        assert attn.attention_head_size < 16 and attn.all_head_size == attn.query.out_features
        assert attn.query.out_features == heads * attn.attention_head_size == attn.key.out_features
        assert layer.attention.output.dense.in_features == attn.all_head_size
        assert layer.intermediate.dense.out_features < 128
    assert {n: c[1] for n, c in d["attention_heads"].items()} == {
        f"bert.bert.encoder.layer.{i}.attention.self": heads for i in range(2)
    }
    # The weights the stage saved fit the rebuilt architecture exactly, and rebuilding is deterministic.
    saved = load_file(str(pruned.artifact.file("weights")))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in model.state_dict().items()}
    again = loader.load(pruned.artifact)
    batch = reviews.test.head(32)
    assert batch["input_ids"].dtype == torch.int64 and batch["attention_mask"].dtype == torch.int64
    with torch.no_grad():
        assert torch.equal(model(**batch), again(**batch))
    assert exported.artifact.kind == ONNX
    assert exported.details["parity"]["top1_agreement"] == 1.0
    assert exported.details["parity"]["max_abs_diff"] < 1e-4
    if heads < 4:
        assert "removed whole attention heads in bert.bert.encoder.layer.0.attention.self" in " ".join(pruned.notes)


def test_attention_settings_give_bert_query_key_value_their_heads():
    model = TinyBert(in_channels=100)
    settings = attention_settings(model)
    expected = {}
    for attn in _attention(model):
        expected.update({attn.query: 4, attn.key: 4, attn.value: 4})
    assert settings["num_heads"] == expected


def test_whole_heads_go_from_the_built_in_vit_too(tmp_path, data):
    kwargs = {"image_size": 8, "patch_size": 2, "dim": 24, "depth": 2, "num_heads": 4}
    loader = ModelLoader(ModelSpec(name="vit_tiny", kwargs=kwargs), 1, data.num_classes, data.example_batch(2))
    pruned, exported = _prune_then_export(tmp_path, data, loader, pruning_ratio=0.5, head_pruning_ratio=0.5)
    model = loader.load(pruned.artifact)
    for block in model.blocks:
        assert block.attn.num_heads == 2 and block.attn.qkv.out_features % (3 * 2) == 0
        assert block.attn.qkv.out_features < 3 * 2 * 6  # head dims pruned too
    x = data.test.tensors[0][:8]
    again = loader.load(pruned.artifact)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert exported.details["parity"]["top1_agreement"] == 1.0


def test_iterative_head_pruning_removes_what_one_step_would(tmp_path, reviews):
    loader = _bert_loader(reviews)
    stages = [{"prune": {"importance": "l2", "head_pruning_ratio": 0.5, "iterative_steps": 2}}]
    source = Artifact(kind=TORCH, directory=None)
    pruned = stage_for(stages).execute(make_context(tmp_path, reviews, loader, source, stages))
    model = loader.load(pruned.artifact)
    assert [attn.num_attention_heads for attn in _attention(model)] == [2, 2]  # not 4 -> 3 -> 1


def test_head_pruning_ratio_needs_heads_torch_pruning_can_remove(tmp_path, data, loader, trained):
    stages = [{"prune": {"head_pruning_ratio": 0.5}}]
    with pytest.raises(UserError, match=r"^stages\[0\]\.prune\.head_pruning_ratio: the model has no attention"):
        stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    mha = ModelSpec(name="tests.stages.test_prune:MhaNet")  # nn.MultiheadAttention, 4 heads
    mha_loader = ModelLoader(mha, 1, data.num_classes, data.example_batch(2))
    source = Artifact(kind=TORCH, directory=None)
    with pytest.raises(UserError, match=r"cannot remove whole heads of nn\.MultiheadAttention \(attn\)") as error:
        stage_for(stages).execute(make_context(tmp_path, data, mha_loader, source, stages))
    assert "\n" not in str(error.value)


def test_a_smaller_bert_head_keeps_the_softmax_scale_of_the_original():
    """Dims that add nothing to q.k (zero in query and key) are pruned: the attention must not change,
    though BERT divides the scores by sqrt(attention_head_size), now sqrt(8) instead of sqrt(16)."""
    import torch_pruning as tp

    from edgeslim.stages.prune import _after_step, _head_sizes

    torch.manual_seed(0)
    attn = _attention(TinyBert(in_channels=100))[0].eval()
    gone = [h * 16 + d for h in range(4) for d in range(8, 16)]
    with torch.no_grad():
        for layer in (attn.query, attn.key, attn.value):
            layer.weight[gone] = 0
            layer.bias[gone] = 0
    hidden = torch.randn(2, 5, 64)
    with torch.no_grad():
        before = attn(hidden)[0]
    sizes = _head_sizes(attn)
    for layer in (attn.query, attn.key, attn.value):
        tp.prune_linear_out_channels(layer, gone)
    pruner = type("P", (), {"num_heads": {attn.query: 4, attn.key: 4, attn.value: 4}})()
    _after_step(attn, pruner, sizes)
    assert (attn.attention_head_size, attn.all_head_size) == (8, 32)
    kept = [i for i in range(64) if i not in gone]
    with torch.no_grad():
        torch.testing.assert_close(attn(hidden)[0], before[..., kept])


def test_iterative_pruning_with_distillation_between_the_steps_is_a_chain_of_stages(tmp_path, tiny_bert):
    """prune -> short distilled finetune -> prune -> ...: each prune removes half of the heads left,
    each finetune learns from the unpruned teacher, layer by layer; the final model rebuilds from its
    history (both prunes replayed) and runs."""
    import edgeslim

    distill = {"teacher": "baseline", "layers": {"hidden": 1.0, "attention": 1.0}}
    step = [
        {"prune": {"importance": "l2", "head_pruning_ratio": 0.5, "pruning_ratio": 0.25}},
        {"finetune": {"epochs": 1, "batch_size": 32, "distill": distill}},
    ]
    cfg = {
        "name": "chain",
        "seed": 0,
        "model": {"hf": str(tiny_bert)},
        "data": {"name": "rotten_tomatoes", "max_length": 32, "max_samples": 300},
        "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
        "stages": ["baseline", *step, *step],
    }
    result = edgeslim.run(cfg, out=tmp_path)
    assert [s.status for s in result.stages] == ["ran"] * 5
    prunes = [s for s in result.stages if s.name.endswith("prune")]
    assert any("4 -> 2 heads" in n for n in prunes[0].notes) and any("2 -> 1 heads" in n for n in prunes[1].notes)
    for finetune in (s for s in result.stages if s.name.endswith("finetune")):
        assert any(n.startswith("layer distillation:") and "0←0, 1←1" in n for n in finetune.notes)
    params = [s.metrics.params for s in result.stages]
    assert params[4] < params[2] < params[0]  # the second prune removed more
