"""Where a model keeps its transformer blocks, found by name (no model code assumed).

Hugging Face encoders (``bert.encoder.layer.N``), decoders (``model.layers.N``, ``transformer.h.N``)
and most hand-written transformers (``blocks.N``) hold their blocks in one indexed list; layer
distillation hooks them and depth pruning removes some.
"""

from __future__ import annotations

import re

from torch import nn

_BLOCK_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layer|layers|blocks|block|h))\.(?P<index>\d+)$")


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks in order: the longest ``prefix.N`` module list."""
    groups: dict[str, dict[int, tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        if m := _BLOCK_NAME.match(name):
            groups.setdefault(m["prefix"], {})[int(m["index"])] = (name, module)
    if not groups:
        return []
    best = max(groups.values(), key=len)
    return [best[i] for i in sorted(best)]
