"""Vocabulary pruning on a BERT wrapped as a user's module, with the real reviews' token ids."""

from __future__ import annotations

import torch

from edgeslim.data.batches import seen_tokens
from edgeslim.prune.vocab import VocabEmbedding, token_embedding
from tests.conftest import make_context, stage_for
from tests.stages.test_prune_attention import _bert_loader, _prune_then_export


def test_the_token_embedding_is_the_one_that_reads_input_ids(reviews):
    model = _bert_loader(reviews).source_model()
    assert token_embedding(model, reviews.example_batch(2)) == "bert.bert.embeddings.word_embeddings"
    assert token_embedding(model, torch.zeros(2, 3)) is None


def test_vocabulary_pruning_keeps_the_seen_tokens_rebuilds_and_exports(tmp_path, reviews):
    loader = _bert_loader(reviews)
    pruned, exported = _prune_then_export(tmp_path, reviews, loader, pruning_ratio=0.25, vocabulary=True)
    v = pruned.details["vocabulary"]
    seen = seen_tokens(reviews.train)
    assert v["rows_before"] == 30522 and len(seen) < v["rows_after"] < 0.2 * 30522  # seen + special tokens
    assert v["params_removed"] > 0.5 * pruned.details["params_before"]  # most of this tiny model was vocabulary
    assert any(n.startswith("vocabulary: bert.bert.embeddings.word_embeddings keeps") for n in pruned.notes)
    model = loader.load(pruned.artifact)  # rebuilt from the history: the same rows and table
    embedding = model.bert.bert.embeddings.word_embeddings
    assert isinstance(embedding, VocabEmbedding) and embedding.num_embeddings == v["rows_after"]
    tokens = reviews.tokens
    unseen = next(i for i in range(1000, 30522) if i not in seen)
    assert embedding.table[unseen] == embedding.table[tokens.unk_id]  # never seen in training: [UNK]'s row
    assert embedding.table[tokens.pad_id] == embedding.padding_idx or embedding.padding_idx is None
    # The ids, the tokenizer and the app's input are unchanged: the ONNX model takes the same input_ids.
    assert exported.details["parity"]["top1_agreement"] == 1.0


def test_vocabulary_pruning_needs_text(tmp_path, data, loader, trained):
    import pytest

    from edgeslim.errors import UserError

    stages = [{"prune": {"vocabulary": True}}]
    with pytest.raises(UserError, match=r"^stages\[0\]\.prune\.vocabulary: needs text data"):
        stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))


def test_a_second_vocabulary_prune_finds_the_rows_through_the_first_table():
    from torch import nn

    from edgeslim.prune.vocab import prune_vocabulary

    model = nn.Sequential(nn.Embedding(10, 3, padding_idx=0))
    weight = model[0].weight.detach().clone()
    prune_vocabulary(model, "0", [0, 2, 5, 7, 9], fallback=2)
    edit = prune_vocabulary(model, "0", [0, 2, 7], fallback=2)
    assert edit["vocabulary"]["size"] == 10 and edit["vocabulary"]["padding_idx"] == 0
    ids = torch.arange(10)
    expected = weight[torch.tensor([0, 2, 2, 2, 2, 2, 2, 7, 2, 2])]  # unseen ids read the fallback's row
    torch.testing.assert_close(model(ids), expected)
