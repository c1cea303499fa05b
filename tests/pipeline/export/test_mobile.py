"""The phone bundle of a text model: ``.ort``, inputs by name (``token_type_ids`` only when the model
takes them), label names, the tokenizer's files and recipe, and WordPiece code whose Python twin gives
the Hugging Face tokenizer's ids on real reviews."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.api import parse_config
from edgeslim.data.text import rotten_tomatoes, tokenize
from edgeslim.export.mobile import (
    build_bundle,
    read_vocab,
    tokenizer_recipe,
    wordpiece_code,
    wordpiece_encode,
)
from edgeslim.export.onnx_io import open_session

MAX_LENGTH = 32


def text_model(path: Path, vocab: int, *, token_types: bool) -> Path:
    """Embedding of ``input_ids`` (+ a token-type embedding), masked mean over the sequence, linear to
    2 classes: int64 inputs with batch/sequence axes, as an exported BERT has them."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((vocab, 4)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq"),
    ]
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e0"])]
    if token_types:
        weights.append(numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "types"))
        nodes += [
            helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
            helper.make_node("Add", ["e0", "t"], ["e"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["e0"], ["e"]))
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "last"], ["mu"]),
        helper.make_node("Mul", ["e", "mu"], ["em"]),
        helper.make_node("ReduceSum", ["em", "seq"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "text",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def text_bundles(tmp_path_factory, reviews):
    """The bundles of a text model without and with ``token_type_ids``, built from 16 real reviews."""
    tokens = reviews.tokens
    out = {}
    for types in (False, True):
        tmp = tmp_path_factory.mktemp(f"text_types_{types}")
        build_bundle(
            text_model(tmp / "in.onnx", tokens.vocab_size, token_types=types),
            tmp,
            preprocessing=None,
            labels=reviews.labels,
            samples=reviews.test.head(16),
            tokenizer={"folder": tokens.tokenizer, "pad_id": tokens.pad_id, "max_length": tokens.max_length},
        )
        out[types] = tmp / "mobile"
    return out


def _info(bundle: Path) -> dict:
    return json.loads((bundle / "model_info.json").read_text())


def test_a_text_bundle_has_the_ort_model_tokenizer_files_recipe_and_label_names(text_bundles):
    bundle = text_bundles[False]
    assert (bundle / "model.ort").read_bytes()[4:8] == b"ORTM"  # the ORT flatbuffer identifier
    info = _info(bundle)
    assert [(i["name"], i["dtype"], i["shape"], i["example_shape"]) for i in info["inputs"]] == [
        ("input_ids", "int64", ["batch", "sequence"], [1, MAX_LENGTH]),
        ("attention_mask", "int64", ["batch", "sequence"], [1, MAX_LENGTH]),
    ]
    assert info["labels"] == info["output"]["labels"] == ["rotten", "fresh"]  # the data's class names
    assert info["output"]["kind_judged_on"] == "16 real input samples"
    tok = info["tokenizer"]
    files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
    assert set(tok["files"]) == files == {p.name for p in (bundle / "tokenizer").iterdir()}
    expected = {
        "kind": "WordPiece",
        "vocab_file": "tokenizer/vocab.txt",
        "vocab_size": 30522,
        "lowercase": True,
        "strip_accents": True,  # MiniLM's strip_accents: null follows lowercase
        "split_cjk_chars": True,
        "continuing_subword_prefix": "##",
        "special_tokens": {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]"},
        "cls_id": 101,
        "sep_id": 102,
        "pad_id": 0,
        "unk_id": 100,
        "max_length": MAX_LENGTH,
        "padding": "right",
        "truncation": "right",
        "token_type_ids": False,
        "app_encoder": "wordpiece",
    }
    assert {k: tok[k] for k in expected} == expected
    assert "[CLS] (101) + the first 30 ids + [SEP] (102)" in tok["encode"] and "token_type_ids" not in tok["encode"]
    readme = (bundle / "README.md").read_text()
    for snippet in (
        "class WordPiece(",  # Kotlin
        "struct WordPiece {",  # Swift
        'val enc = WordPiece(assets.open("tokenizer/vocab.txt")',
        "val inputIds = enc.inputIds",
        "var attentionMask = enc.attentionMask",
        "longArrayOf(1L, 32L)",
        "onnxruntime-extensions",
        "gen_processing_models",
        "OrtxPackage.getLibraryPath()",
        "registerCustomOps(functionPointer: RegisterCustomOps)",
    ):
        assert snippet in readme, snippet
    assert '"token_type_ids"' not in readme and "enc.tokenTypeIds" not in readme  # the model does not take them


def test_token_type_ids_are_an_input_and_fed_as_zeros_only_when_the_model_takes_them(text_bundles):
    info = _info(text_bundles[True])
    assert [(i["name"], i["example_shape"]) for i in info["inputs"]] == [
        ("input_ids", [1, MAX_LENGTH]),
        ("attention_mask", [1, MAX_LENGTH]),
        ("token_type_ids", [1, MAX_LENGTH]),
    ]
    assert info["output"]["kind_judged_on"] == "16 real input samples"  # zeros stood in for the types
    assert info["tokenizer"]["token_type_ids"] is True
    assert "token_type_ids: 0 for every position (one sentence)" in info["tokenizer"]["encode"]
    readme = (text_bundles[True] / "README.md").read_text()
    assert "val tokenTypeIds = enc.tokenTypeIds" in readme and "var tokenTypeIds = enc.tokenTypeIds" in readme
    assert '"token_type_ids" to tokenTypeIdsTensor' in readme and '"token_type_ids": tokenTypeIdsTensor' in readme
    assert "0 everywhere (one sentence)" in readme  # the Java/Objective-C fill note
    assert "token_type_ids" not in [i["name"] for i in _info(text_bundles[False])["inputs"]]


def test_the_wordpiece_twin_gives_the_training_tokenizers_ids_on_real_reviews(text_bundles):
    """The shipped recipe and vocab.txt, followed step by step, give exactly the ids (and mask) the
    model was trained on, for 50 real reviews spread over the corpus and a few hard cases."""
    bundle = text_bundles[True]
    tok = _info(bundle)["tokenizer"]
    vocab = read_vocab(bundle / tok["vocab_file"])
    texts = [
        *rotten_tomatoes().texts[::97][:50],
        "Ünïcödé café — naïve “quotes” 東京 $5+^ ΟΔΟΣ İstanbul\ttab\u00a0nbsp \x00ctrl\u200bzwsp 😀",
        "supercalifragilisticexpialidocious-ness!!! " + "a" * 150,
        "",
    ]
    assert len(texts) == 53
    data = {"name": "rotten_tomatoes", "max_length": MAX_LENGTH}
    spec = parse_config({"name": "t", "model": {"name": "text_cnn"}, "stages": ["baseline"], "data": data}).data
    reference = tokenize(texts, spec)  # what the pipeline trains on
    mine = [wordpiece_encode(t, tok, vocab) for t in texts]
    np.testing.assert_array_equal(np.array([m["input_ids"] for m in mine]), reference.ids)
    np.testing.assert_array_equal(np.array([m["attention_mask"] for m in mine]), reference.mask)
    assert all(m["token_type_ids"] == [0] * MAX_LENGTH for m in mine)
    assert sum(m["input_ids"][-1] != 0 for m in mine) > 5  # some reviews are truncated to 32 tokens
    # the .ort model runs on those inputs as an app would feed them
    session = open_session(bundle / "model.ort")
    feed = {k: np.array([mine[0][k]], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert session.run(None, feed)[0].shape == (1, 2)


def test_the_kotlin_and_swift_encoders_carry_the_recipe(text_bundles):
    kotlin, swift = wordpiece_code(_info(text_bundles[False])["tokenizer"])
    for line in ("private val maxLength = 32", "private val cls = 101L; private val sep = 102L", "pad = 0L"):
        assert line in kotlin
    assert "private val lowercase = true; private val stripAccents = true; private val splitCjk = true" in kotlin
    assert 'vocab[(if (start > 0) "##" else "")' in kotlin and "0x2B920..0x2CEAF" in kotlin
    assert "let cls: Int64 = 101, sep: Int64 = 102, pad: Int64 = 0, unk: Int64 = 100" in swift
    assert 'let prefix = Array("##".unicodeScalars)' in swift and "0x2B920...0x2CEAF" in swift
    assert "<<" not in kotlin + swift  # every placeholder filled


def test_a_tokenizer_that_is_not_berts_wordpiece_gets_no_wordpiece_code(tmp_path, reviews):
    folder = tmp_path / "tok"
    shutil.copytree(reviews.tokens.tokenizer, folder, ignore=lambda _d, names: [n for n in names if "token" not in n])
    shutil.copy(Path(reviews.tokens.tokenizer) / "vocab.txt", folder / "vocab.txt")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    recipe, tokens = tokenizer_recipe(folder, 0, 16)
    assert recipe["app_encoder"] is None and "padding on the left" in recipe["app_encoder_note"]
    assert tokens is not None and len(tokens) == 30522
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"]["type"] = "BPE"
    spec["pre_tokenizer"] = {"type": "ByteLevel"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    recipe, _ = tokenizer_recipe(folder, 0, 16)
    assert recipe["kind"] == "BPE" and recipe["app_encoder"] is None
    assert "a BPE tokenizer, not WordPiece" in recipe["app_encoder_note"]
    assert "pre-tokenizer ByteLevel" in recipe["app_encoder_note"]
