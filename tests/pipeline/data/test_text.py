"""Text sources: the real Rotten Tomatoes reviews and the user's CSV/TSV/JSONL files, tokenized with
the pretrained MiniLM's tokenizer from local files, as int64 token ids through every stage."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest
import torch

from edgeslim.api import parse_config
from edgeslim.data.datasets import load_data
from edgeslim.data.text import rotten_tomatoes
from edgeslim.errors import UserError


def _data(**spec) -> object:
    cfg = {"name": "t", "model": {"name": "text_cnn"}, "data": spec, "stages": ["baseline"]}
    return load_data(parse_config(cfg).data)


def test_rotten_tomatoes_are_real_reviews_as_token_ids() -> None:
    data = _data(name="rotten_tomatoes", max_length=32)
    inputs, y = data.train.tensors
    x, mask = inputs["input_ids"], inputs["attention_mask"]  # two named model inputs
    total = sum(len(split) for split in (data.train, data.val, data.test))
    assert total == 4866  # the fresh and rotten snippets (plot summaries dropped)
    assert x.dtype == torch.int64 and x.shape[1] == 32 and data.input_shape == (32,)
    assert torch.equal(mask, (x != 0).long())  # 1 for tokens, 0 for padding
    assert [(f.name, f.dtype, f.axes, f.example) for f in data.input_spec] == [
        ("input_ids", "int64", ["batch", "sequence"], [1, 32]),
        ("attention_mask", "int64", ["batch", "sequence"], [1, 32]),
    ]
    assert data.labels == ["rotten", "fresh"] and data.num_classes == 2
    assert abs(float(y.float().mean()) - 2455 / 4866) < 0.01  # stratified split keeps the class balance
    assert data.tokens is not None and data.tokens.pad_id == 0 and data.tokens.vocab_size == 30522
    assert data.in_channels == 30522  # built-in text models are sized by the vocabulary
    assert (x == 0).any() and int(x[:, 0].unique()[0]) == 101  # padded; every text starts with [CLS]
    assert data.fingerprint == _data(name="rotten_tomatoes", max_length=32).fingerprint
    assert data.fingerprint != _data(name="rotten_tomatoes", max_length=24).fingerprint


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_text_files_with_named_columns(tmp_path: Path, suffix: str) -> None:
    reviews = rotten_tomatoes()
    rows = [
        {"review": t, "sentiment": ["neg", "pos"][int(c)]} for t, c in zip(reviews.texts, reviews.labels, strict=True)
    ][:90]
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["review", "sentiment"], delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    data = _data(name="text_csv", path=str(path), text_column="review", label_column="sentiment", max_length=16)
    assert data.labels == ["neg", "pos"] and data.train.tensors[0]["input_ids"].shape[1] == 16
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 90
    with pytest.raises(UserError, match=r"^data\.text_column: row 1 of .* has no 'text' \(it has: review, sentiment\)"):
        _data(name="text_csv", path=str(path), label_column="sentiment")


def test_text_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.max_length: only for name: rotten_tomatoes \| text_csv"):
        _data(name="digits", max_length=16)
    with pytest.raises(UserError, match=r"data\.path: required for name: text_csv"):
        _data(name="text_csv")
    with pytest.raises(UserError, match=r"^data\.tokenizer: not a folder: "):
        _data(name="rotten_tomatoes", tokenizer=str(tmp_path / "nope"))
    with pytest.raises(UserError, match=r"^data\.tokenizer: cannot load a tokenizer from "):
        _data(name="rotten_tomatoes", tokenizer=str(tmp_path))


def test_a_text_model_goes_through_every_stage_on_token_ids(tmp_path: Path) -> None:
    """text_cnn on real reviews: int64 ids through train, prune, fine-tune (with token deletion and
    swaps), export, INT8 and benchmark."""
    import edgeslim

    stages = [
        {"train": {"epochs": 3, "batch_size": 32, "optimizer": {"lr": 0.003}}},
        "baseline",
        {"prune": {"pruning_ratio": 0.5}},
        {"finetune": {"epochs": 1, "batch_size": 32, "augment": {"token_delete": 0.1, "token_swap": 0.05}}},
        "export",
        "quantize",
        {"export": {"target": "mobile"}},
        "benchmark",
    ]
    cfg = {
        "name": "text",
        "seed": 0,
        "model": {"name": "text_cnn", "kwargs": {"dim": 16, "width": 32}},
        "data": {"name": "rotten_tomatoes", "max_length": 32, "max_samples": 1500},
        "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
        "stages": stages,
    }
    result = edgeslim.run(cfg, out=tmp_path)
    assert [s.status for s in result.stages] == ["ran"] * 8
    assert result.stage("prune").metrics.params < result.stage("baseline").metrics.params
    graph = onnx.load(str(result.model_file("04-export"))).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]  # separate, named, int64
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.INT64}
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert "Gather" in {n.op_type for n in graph.node}
    # (a CNN trained from scratch on 1,050 reviews stays near chance: what is checked here is that
    # token ids flow through every stage; the pretrained MiniLM learns the task, see test_hf.py)
    exported, quantized = result.stage("04-export").metrics, result.stage("quantize")
    if quantized.metrics.size_bytes < exported.size_bytes / 2:  # INT8 shipped: the embedding table too
        assert quantized.metrics.accuracy >= exported.accuracy - 0.03  # the 1-point validation guard, on test
    else:  # or float kept, saying why (slower, or over the accuracy budget)
        assert any("kept the float" in n or "keep float" in n for n in quantized.notes), quantized.notes
    bundle = result.stage_dir("06-export") / "mobile"
    info = json.loads((bundle / "model_info.json").read_text())
    assert [(i["name"], i["dtype"], i["example_shape"]) for i in info["inputs"]] == [
        ("input_ids", "int64", [1, 32]),
        ("attention_mask", "int64", [1, 32]),
    ]
    assert info["tokenizer"]["pad_id"] == 0 and info["tokenizer"]["max_length"] == 32
    assert (bundle / "tokenizer" / "tokenizer.json").is_file() and (bundle / "tokenizer" / "vocab.txt").is_file()
    readme = (bundle / "README.md").read_text()
    assert "encoded with the tokenizer in `tokenizer/`" in readme and "LongArray" in readme
