"""Vocabulary pruning: keep only the token embeddings of tokens the training data uses.

A text model's token embedding is often most of its size (MiniLM: 11.7 M of 22.7 M parameters
for 30,522 WordPiece tokens, of which a task's data uses a fraction). The embedding is replaced by
:class:`VocabEmbedding`: the kept rows plus a lookup table from the tokenizer's ids to those rows,
so the data, the tokenizer and the app's input stay exactly as they were; a token the training data
never used reads the ``[UNK]`` row. The table is one extra ``Gather`` in the ONNX graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeslim.data.batches import Inputs, call

VOCABULARY = "vocabulary"  # the pruning-history entry


class VocabEmbedding(nn.Embedding):
    """An ``nn.Embedding`` over a subset of the vocabulary: ``table[id]`` is the id's row.

    A subclass, so torch-pruning still prunes its embedding dimension like any embedding."""

    def __init__(self, rows: int, dim: int, vocab_size: int, padding_idx: int | None = None) -> None:
        super().__init__(rows, dim, padding_idx=padding_idx)
        self.register_buffer("table", torch.zeros(vocab_size, dtype=torch.int64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(self.table[ids])


def token_embedding(model: nn.Module, example: Inputs) -> str | None:
    """The name of the ``nn.Embedding`` that reads ``input_ids`` directly (not positions or types)."""
    if not isinstance(example, dict) or "input_ids" not in example:
        return None
    ids = example["input_ids"]
    found: list[str] = []
    hooks = [
        m.register_forward_hook(lambda m, args, out, name=name: found.append(name) if args and args[0] is ids else None)
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding)
    ]
    try:
        with torch.no_grad():
            call(model.eval(), example)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if len(set(found)) == 1 else None


def prune_vocabulary(model: nn.Module, name: str, keep: list[int], fallback: int) -> dict[str, Any]:
    """Replace embedding ``name`` by the rows ``keep`` (sorted ids); other ids read ``fallback``'s row.
    Returns the pruning-history entry that rebuilds it."""
    old = model.get_submodule(name)
    pruned_before = isinstance(old, VocabEmbedding)  # a second vocabulary prune: rows are found via its table
    size = old.table.numel() if pruned_before else old.num_embeddings
    padding = old.padding_idx
    if pruned_before and padding is not None:
        padding = int((old.table == padding).nonzero()[0])  # back to a tokenizer id
    edit = {
        VOCABULARY: {"module": name, "keep": sorted(keep), "fallback": fallback, "size": size, "padding_idx": padding}
    }
    rows = torch.tensor(edit[VOCABULARY]["keep"])
    new = apply_vocabulary(model, edit[VOCABULARY])
    with torch.no_grad():
        new.weight.copy_(old.weight[old.table[rows] if pruned_before else rows])
    return edit


def apply_vocabulary(model: nn.Module, spec: dict[str, Any]) -> VocabEmbedding:
    """Swap in the :class:`VocabEmbedding` a history entry describes (weights: from the artifact)."""
    keep: list[int] = spec["keep"]
    if spec["fallback"] not in keep:
        raise ValueError(f"vocabulary: the fallback token {spec['fallback']} must be kept")
    old = model.get_submodule(spec["module"])
    row = {token: i for i, token in enumerate(keep)}
    padding = spec.get("padding_idx")
    new = VocabEmbedding(len(keep), old.embedding_dim, spec["size"], row.get(padding) if padding is not None else None)
    table = torch.full((spec["size"],), row[spec["fallback"]], dtype=torch.int64)
    table[torch.tensor(keep)] = torch.arange(len(keep))
    new.table.copy_(table)
    parent_name, _, attr = spec["module"].rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return new
