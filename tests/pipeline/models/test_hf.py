"""Hugging Face model folders on disk: local files only, no remote code, token ids in, logits out."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgeslim
from edgeslim.api import parse_config
from edgeslim.data.datasets import load_data
from edgeslim.errors import UserError
from edgeslim.export.onnx_io import onnx_logits
from edgeslim.models.loader import ModelLoader


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
    example = loader.example
    ids, mask = example["input_ids"], example["attention_mask"]  # named inputs, as app code feeds them
    assert ids.dtype == mask.dtype == torch.int64
    assert model(**example).shape == (4, 2)
    torch.testing.assert_close(model(ids), model(**example))  # without a mask: ids != pad id
    pad = torch.zeros(4, 8, dtype=torch.int64)
    padded = {"input_ids": torch.cat([ids, pad], dim=1), "attention_mask": torch.cat([mask, pad], dim=1)}
    torch.testing.assert_close(model.eval()(**padded), model(**example), atol=1e-4, rtol=1e-4)  # same answer
    again = ModelLoader(config.model, loader.in_channels, 2, example)
    assert again.source_hash() == loader.source_hash()
    torch.testing.assert_close(again.source_model()(**example), model(**example))  # the new head is seeded


def test_the_pretrained_minilm_is_a_built_in_folder() -> None:
    loader = _loader(_config("all-MiniLM-L6-v2"))
    model = loader.source_model()
    assert sum(p.numel() for p in model.hf.bert.parameters()) > 22_000_000  # the real 6-layer MiniLM
    assert model(**loader.example).shape == (4, 2)


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
    with pytest.raises(UserError, match=r"^model\.hf: .*carries its architecture and weights: remove name"):
        parse_config({"name": "x", "model": {"hf": str(tiny_bert), "name": "tiny_cnn"}, "stages": ["baseline"]})


def _run_on_reviews(folder: Path, out: Path, max_samples: int, stages: list) -> edgeslim.RunResult:
    """The folder's model on the real reviews (32 tokens), quick measurement settings."""
    cfg = {
        "name": "bert",
        "seed": 0,
        "model": {"hf": str(folder)},
        "data": {"name": "rotten_tomatoes", "max_length": 32, "max_samples": max_samples},
        "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
        "stages": stages,
    }
    return edgeslim.run(cfg, out=out)


def test_a_folder_goes_through_train_export_and_quantize(tiny_bert: Path, tmp_path: Path) -> None:
    stages = [{"train": {"epochs": 1, "batch_size": 32}}, "baseline", "export", {"quantize": {"method": "dynamic"}}]
    result = _run_on_reviews(tiny_bert, tmp_path, 300, stages)
    assert [s.status for s in result.stages] == ["ran"] * 4
    graph = onnx.load(str(result.model_file("export"))).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.INT64}
    exported = result.stage("export")
    assert exported.metrics.accuracy == result.stage("baseline").metrics.accuracy  # parity on real reviews


def test_optimum_quantizes_a_bert_export_into_integer_kernels(tiny_bert: Path, tmp_path: Path) -> None:
    """quantize: {method: optimum} on the torch exporter's graph: optimum's ORTQuantizer (avx512_vnni
    preset, per-channel) turns every MatMul into MatMulInteger, the Linear layers' and attention's two
    activation-by-activation ones, and the result passes the stage's accuracy guard."""
    stages = [
        {"train": {"epochs": 1, "batch_size": 32}},
        "baseline",
        {"export": {}},
        {"quantize": {"method": "optimum", "never_slower": False}},  # a 2-layer BERT is too small to be faster
    ]
    result = _run_on_reviews(tiny_bert, tmp_path, 300, stages)
    assert [s.status for s in result.stages] == ["ran"] * 4
    quantized = result.stage("quantize")
    assert quantized.details["deliverable"] == "int8" and not any("accuracy guard" in n for n in quantized.notes)
    assert quantized.details["recipe"] == {
        "method": "optimum",
        "optimum_preset": "avx512_vnni",
        "per_channel": True,
        "reduce_range": False,
    }
    ops = Counter(n.op_type for n in onnx.load(str(result.model_file("quantize"))).graph.node)
    # 2 blocks x (Q, K, V, output, 2 FFN) + pooler + classifier = 14 weights, and 2 x 2 attention products
    assert ops["MatMulInteger"] == ops["DynamicQuantizeLinear"] == 18 and "MatMul" not in ops and "Gemm" not in ops
    assert quantized.details["quantized_weights"] == 14
    data = load_data(_config(str(tiny_bert)).data)
    before, after = (onnx_logits(result.model_file(s), data.test) for s in ("export", "quantize"))
    cosine = (before * after).sum(1) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
    assert cosine.min() > 0.99 and (before.argmax(1) == after.argmax(1)).mean() >= 0.98


def test_a_bert_with_named_inputs_goes_through_the_whole_pipeline(tiny_bert: Path, tmp_path: Path) -> None:
    """input_ids + attention_mask, two named inputs, from training to the phone bundle: heads and FFN
    pruned (the default hessian criterion), distilled from the baseline (logits, hidden states and
    attention maps), dynamic INT8, benchmarked,
    bundled with the tokenizer."""
    stages = [
        {"train": {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.001}}},
        "baseline",
        {"prune": {"pruning_ratio": 0.25, "head_pruning_ratio": 0.5}},
        {"finetune": {"epochs": 1, "batch_size": 32, "distill": {"teacher": "baseline", "layers": {}}}},
        "export",
        {"quantize": {"method": "dynamic"}},
        {"export": {"target": "mobile"}},
        "benchmark",
    ]
    result = _run_on_reviews(tiny_bert, tmp_path, 600, stages)
    assert [s.status for s in result.stages] == ["ran"] * 8
    pruned, baseline = result.stage("prune"), result.stage("baseline")
    assert pruned.metrics.params < 0.9 * baseline.metrics.params
    finetune_notes = result.stage("finetune").notes
    assert any("distilled from baseline" in n for n in finetune_notes)
    # the pruned hidden size (0.25 of 32) is matched to the teacher's through learned adapters
    assert any(
        n.startswith("layer distillation: hidden x1.0, attention x1.0 over blocks 0←0, 1←1, learned adapters on 2")
        for n in finetune_notes
    ), finetune_notes
    graph = onnx.load(str(result.model_file("04-export"))).graph
    assert [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in graph.input] == [
        ("input_ids", ["batch", "sequence"]),
        ("attention_mask", ["batch", "sequence"]),
    ]
    manifest = json.loads((result.stage_dir("04-export") / "manifest.json").read_text())
    assert [(i["name"], i["dtype"], i["axes"], i["example"]) for i in manifest["input_spec"]] == [
        ("input_ids", "int64", ["batch", "sequence"], [1, 32]),
        ("attention_mask", "int64", ["batch", "sequence"], [1, 32]),
    ]
    artifact = json.loads((result.stage_dir("04-export") / "artifact.json").read_text())
    assert artifact["meta"]["output_kind"] == "logits" and artifact["meta"]["input_spec"] == manifest["input_spec"]
    bundle = result.stage_dir("06-export") / "mobile"
    info = json.loads((bundle / "model_info.json").read_text())
    assert [(i["name"], i["example_shape"]) for i in info["inputs"]] == [
        ("input_ids", [1, 32]),
        ("attention_mask", [1, 32]),
    ]
    assert info["output"]["kind"] == "logits" and (bundle / "tokenizer" / "vocab.txt").is_file()
    assert (bundle / "model.ort").read_bytes()[4:8] == b"ORTM" and info["labels"] == ["rotten", "fresh"]
    # BERT's tokenizer makes token_type_ids, but the exported model does not take them: not in the bundle
    assert info["tokenizer"]["app_encoder"] == "wordpiece" and info["tokenizer"]["token_type_ids"] is False
    assert "enc.inputIds" in (bundle / "README.md").read_text()
    assert result.stage("benchmark").metrics.accuracy == result.stage("quantize").metrics.accuracy


def test_a_bert_block_is_dropped_and_distilled_from_the_teacher_block_it_was(tiny_bert: Path, tmp_path: Path) -> None:
    """drop_layers removes a whole block (measured), later stages rebuild the shorter model from the
    history, and layer distillation maps the surviving block to its original teacher block."""
    stages = [
        {"train": {"epochs": 1, "batch_size": 32, "optimizer": {"lr": 0.001}}},
        "baseline",
        {"prune": {"drop_layers": 1, "pruning_ratio": 0.25}},
        {"finetune": {"epochs": 1, "batch_size": 32, "distill": {"teacher": "baseline", "layers": {}}}},
        "export",
    ]
    result = _run_on_reviews(tiny_bert, tmp_path, 300, stages)
    assert [s.status for s in result.stages] == ["ran"] * 5
    dropped = result.stage("prune").details["drop_layers"]
    assert dropped["container"] == "hf.bert.encoder.layer" and len(dropped["kept"]) == 1
    assert len(dropped["skip_losses"][0]["losses"]) == 2
    kept = dropped["kept"][0]
    assert any(f"over blocks 0←{kept}" in n for n in result.stage("finetune").notes)
    graph = onnx.load(str(result.model_file("export"))).graph
    layer_norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert len(layer_norms) == 3  # embeddings + the one block's two (two blocks would have five)
    assert result.stage("export").metrics.accuracy == result.stage("finetune").metrics.accuracy


def test_batches_are_cut_to_their_longest_review_and_the_outputs_do_not_change(tiny_bert: Path) -> None:
    from edgeslim.data.batches import trim_padding, trims_padding
    from edgeslim.train.loop import evaluate, predict

    config = _config(str(tiny_bert), max_length=48)
    data = load_data(config.data)
    model = _loader(config).source_model().eval()
    assert trims_padding(model) and trims_padding(torch.nn.Module()) is False
    batch, _ = next(data.val.batches(16))
    cut = trim_padding(batch)
    longest = int(batch["attention_mask"].sum(1).max())
    assert longest < 48 and {tuple(v.shape) for v in cut.values()} == {(16, longest)}  # reviews are short
    torch.testing.assert_close(model(**cut), model(**batch), atol=1e-5, rtol=1e-4)
    untrimmed = torch.cat([model(**x) for x, _ in data.val.batches(64)])
    torch.testing.assert_close(predict(model, data.val, 64), untrimmed, atol=1e-5, rtol=1e-4)
    assert evaluate(model, data.val)[0] == float((untrimmed.argmax(1) == data.val.labels).float().mean())
    left = {k: v.flip(1) for k, v in batch.items()}  # left padding: positions would move, nothing is cut
    assert trim_padding(left) is left
    assert trim_padding(batch["input_ids"]) is batch["input_ids"]  # one tensor: a model of fixed length


def test_training_steps_see_each_batch_at_its_own_length(tiny_bert: Path, tmp_path: Path) -> None:
    from edgeslim.models.hf import TokenClassifier

    lengths: list[int] = []
    original = TokenClassifier.forward

    def recording(self, input_ids, attention_mask=None):
        lengths.append(input_ids.shape[1])
        return original(self, input_ids, attention_mask)

    TokenClassifier.forward = recording
    try:
        cfg = {
            "name": "trim",
            "model": {"hf": str(tiny_bert)},
            "data": {"name": "rotten_tomatoes", "max_length": 64, "max_samples": 200},
            "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
            "stages": [{"train": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-4}}}],
        }
        edgeslim.run(cfg, out=tmp_path)
    finally:
        TokenClassifier.forward = original
    assert lengths and max(lengths) <= 64 and min(lengths) < max(lengths)  # cut per batch (max_length 64)
