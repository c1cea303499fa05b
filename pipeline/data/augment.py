"""Training-batch augmentation: images (random shift, rotation, scale, noise) and token ids
(synonym replacement, random deletion and neighbour swaps: "easy data augmentation" for small
text tasks, Wei & Zou 2019).

Applied on the fly to each training batch only, from the run's seeded generator; evaluation
never sees it. Synonyms come from a word list (one group of interchangeable words per line; the
English list ``synonyms_en.txt`` ships with edgeslim) and work on token ids: a word is replaced
only where it and its replacement are single tokens of the data's tokenizer and the replacement
occurs in the training data (so a vocabulary-pruned model never reads an unseen token).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from edgeslim.config.schema import StrictModel


class AugmentConfig(StrictModel):
    shift: float = Field(0.0, ge=0, description="max translation in pixels")
    rotate: float = Field(0.0, ge=0, le=180, description="max rotation in degrees")
    scale: float = Field(0.0, ge=0, lt=1, description="max relative zoom in or out")
    noise: float = Field(0.0, ge=0, description="std of added Gaussian noise (in normalised units)")
    token_delete: float = Field(0.0, ge=0, lt=1, description="text: probability that a token is deleted")
    token_swap: float = Field(0.0, ge=0, le=1, description="text: neighbour swaps per token")
    token_synonym: float = Field(
        0.0, ge=0, lt=1, description="text: probability that a word with a synonym is replaced by one"
    )
    synonyms: Path | None = Field(
        None, description="text: a synonym word list (one group per line); default: edgeslim's English list"
    )

    @property
    def for_images(self) -> bool:
        return bool(self.shift or self.rotate or self.scale or self.noise)

    @property
    def for_tokens(self) -> bool:
        return bool(self.token_delete or self.token_swap or self.token_synonym)


BUILTIN_SYNONYMS = Path(__file__).with_name("synonyms_en.txt")


@dataclass(frozen=True)
class SynonymTable:
    """Token id -> the ids it may become; ``continuations``: word-piece ids (``##ing``) after which
    the preceding token is part of a longer word and is left alone."""

    choices: Mapping[int, torch.Tensor]
    continuations: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.choices)


def read_synonym_groups(path: Path | None, where: str) -> list[list[str]]:
    """Groups of interchangeable words from a word list (``#`` starts a comment)."""
    from edgeslim.errors import UserError

    path = path or BUILTIN_SYNONYMS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"{where}.synonyms: cannot read the word list {path}: {e.strerror or e}") from None
    groups = [line.split("#", 1)[0].split() for line in lines]
    groups = [g for g in groups if len(g) > 1]
    if not groups:
        raise UserError(f"{where}.synonyms: {path} has no group of two or more words (one group per line)")
    return groups


def synonym_table(groups: Iterable[list[str]], vocab: Mapping[str, int], allowed: set[int]) -> SynonymTable:
    """Token id -> the other single-token words of its groups that are ``allowed`` (seen in training).

    A word may sit in several groups (``show``: display, programme); its choices are their union."""
    choices: dict[int, set[int]] = {}
    for group in groups:
        ids = {vocab[w.lower()] for w in group if w.lower() in vocab}
        for i in ids:
            others = (ids - {i}) & allowed
            if others:
                choices.setdefault(i, set()).update(others)
    return SynonymTable(
        {i: torch.tensor(sorted(o), dtype=torch.int64) for i, o in sorted(choices.items())},
        frozenset(i for w, i in vocab.items() if w.startswith("##")),
    )


def build_synonym_table(cfg: AugmentConfig, tokenizer_folder: Path, seen: set[int], where: str) -> SynonymTable:
    """The table for ``cfg.synonyms`` over the tokenizer's vocabulary, or an error when it is empty."""
    from transformers import AutoTokenizer

    from edgeslim.errors import UserError

    groups = read_synonym_groups(cfg.synonyms, where)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True, trust_remote_code=False)
    table = synonym_table(groups, tokenizer.get_vocab(), seen)
    if not table:
        raise UserError(
            f"{where}.token_synonym: no word of {cfg.synonyms or BUILTIN_SYNONYMS.name} has a synonym that is one "
            "token of this tokenizer and occurs in the training data (another word list, or token_synonym: 0)"
        )
    return table


def check_augment(cfg: AugmentConfig, sample: torch.Tensor | dict[str, torch.Tensor], where: str) -> None:
    """Image options need an image tensor; token options need ``input_ids`` + ``attention_mask``."""
    from edgeslim.errors import UserError

    named = isinstance(sample, dict)
    if named and cfg.for_images:
        raise UserError(
            f"{where}: shift/rotate/scale/noise work on image tensors, not on named inputs ({list(sample)})"
        )
    if cfg.for_tokens and not (named and {"input_ids", "attention_mask"} <= set(sample)):
        got = list(sample) if named else "one tensor"
        raise UserError(
            f"{where}: token_delete/token_swap/token_synonym need input_ids and attention_mask inputs (got {got})"
        )


def augment_inputs(
    x: torch.Tensor | dict[str, torch.Tensor],
    cfg: AugmentConfig,
    generator: torch.Generator,
    synonyms: SynonymTable | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(x, dict):
        return augment_tokens(x, cfg, generator, synonyms) if cfg.for_tokens else x
    return augment_batch(x, cfg, generator)


def replace_synonyms(
    tokens: torch.Tensor, p: float, synonyms: SynonymTable, generator: torch.Generator
) -> torch.Tensor:
    """Each whole-word token that has synonyms becomes a random one of them with probability ``p``."""
    out = tokens.clone()
    draws = torch.rand(len(tokens), generator=generator)
    listed = tokens.tolist()
    for j, token in enumerate(listed):
        choices = synonyms.choices.get(token)
        if choices is None or draws[j] >= p:
            continue
        if j + 1 < len(listed) and listed[j + 1] in synonyms.continuations:
            continue  # the first piece of a longer word
        out[j] = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    return out


def augment_tokens(
    x: dict[str, torch.Tensor],
    cfg: AugmentConfig,
    generator: torch.Generator,
    synonyms: SynonymTable | None = None,
) -> dict[str, torch.Tensor]:
    """Replace words by synonyms, then delete and swap tokens, between the first and last real token
    of each right-padded text (``[CLS]`` and ``[SEP]`` stay); the freed positions become padding and
    the mask follows. Deletion and swaps act on WordPiece tokens, as the training sees them."""
    if cfg.token_synonym and synonyms is None:
        raise ValueError("token_synonym needs a synonym table (build_synonym_table)")
    ids, mask = x["input_ids"], x["attention_mask"]
    out_ids, out_mask = ids.clone(), mask.clone()
    padded = ids[mask == 0]
    pad_id = int(padded[0]) if len(padded) else 0
    for i in range(len(ids)):
        length = int(mask[i].sum())
        if length <= 3:
            continue
        inner = ids[i, 1 : length - 1]
        if cfg.token_synonym and synonyms:
            inner = replace_synonyms(inner, cfg.token_synonym, synonyms, generator)
        keep = torch.rand(len(inner), generator=generator) >= cfg.token_delete
        if keep.any():
            inner = inner[keep]
        inner = inner.clone()
        for _ in range(round(cfg.token_swap * len(inner))):
            if len(inner) < 2:
                break
            j = int(torch.randint(len(inner) - 1, (1,), generator=generator))
            inner[[j, j + 1]] = inner[[j + 1, j]]
        text = torch.cat([ids[i, :1], inner, ids[i, length - 1 : length]])
        out_ids[i] = pad_id
        out_ids[i, : len(text)] = text
        out_mask[i] = 0
        out_mask[i, : len(text)] = 1
    return {**x, "input_ids": out_ids, "attention_mask": out_mask}


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of an image batch ``(N, C, H, W)``; other shapes get noise only."""
    n = x.shape[0]
    if x.dim() == 4 and (cfg.shift or cfg.rotate or cfg.scale):
        h, w = x.shape[-2:]
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.rotate)
        zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * cfg.scale
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * cfg.shift
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1), torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.noise:
        x = x + torch.randn(x.shape, generator=generator) * cfg.noise
    return x
