"""The cache matrix: every input a stage depends on, changed alone, re-runs exactly that stage
and the ones after it; nothing is reused from different inputs.

One cell per row of docs/reliability.md's cache table. Each cell starts from a copy of one
finished run, changes one thing, and runs again in-process.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from pipeline import runner as runner_module
from pipeline.config import parse_config
from pipeline.models import build_model
from pipeline.runner import Runner
from tests.conftest import small_config

STAGES: list[Any] = [
    {"train": {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.01}}},
    "baseline",
    {"prune": {"importance": "l1", "pruning_ratio": 0.3}},
    {"finetune": {"epochs": 1, "batch_size": 32}},
    "export",
    {"quantize": {"calibration_samples": 32}},
    {"benchmark": {"runs": 5, "warmup": 1, "batch_sizes": [1], "op_profile_runs": 0}},
]
# One setting per stage that has any (baseline has none: it measures the model as it is).
SETTING_CHANGES = {
    0: ("epochs", 3),
    2: ("pruning_ratio", 0.4),
    3: ("epochs", 2),
    4: ("opset", 19),
    5: ("calibration", "percentile"),
    6: ("runs", 6),
}


def config(root: Path, stages: list[Any] = STAGES, **overrides: Any):
    cfg = small_config(
        stages,
        model={"name": "tiny_cnn", "checkpoint": str(root / "start.safetensors")},
        data={"name": "tests.helpers.factories:digits_from_file", "kwargs": {"path": str(root / "digits.npz")}},
    )
    return parse_config({**cfg, **overrides})


def write_model(root: Path, seed: int = 0) -> None:
    """The starting weights the config points at (``model.checkpoint``)."""
    torch.manual_seed(seed)
    save_file(build_model("tiny_cnn", {}, 1, 10).state_dict(), str(root / "start.safetensors"))


def write_data(root: Path, samples: int = 500) -> None:
    """Real digits saved as the user's data file (``data.kwargs.path``)."""
    digits = load_digits()
    x = (digits.data[:samples] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    np.savez(root / "digits.npz", x=x, y=digits.target[:samples])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    write_model(root)
    write_data(root)
    report = Runner(config(root), root / "out").run()
    assert [s["status"] for s in report["stages"]] == ["ran"] * len(STAGES)
    return root


def reran_from(index: int) -> list[str]:
    return ["cached"] * index + ["ran"] * (len(STAGES) - index)


def rerun(finished: Path, tmp_path: Path, cfg) -> list[str]:
    """Run ``cfg`` on a private copy of the finished run's output folder."""
    out = tmp_path / "out"
    shutil.copytree(finished / "out", out)
    return [s["status"] for s in Runner(cfg, out).run()["stages"]]


@contextlib.contextmanager
def rewritten(path: Path, write: Callable[[], None]) -> Iterator[None]:
    """New bytes at the same path for one run (the config does not change), then the old ones back."""
    original = path.read_bytes()
    try:
        write()
        yield
    finally:
        path.write_bytes(original)


def test_nothing_changed_reuses_everything(finished: Path, tmp_path: Path) -> None:
    assert rerun(finished, tmp_path, config(finished)) == ["cached"] * len(STAGES)


@pytest.mark.parametrize("index", sorted(SETTING_CHANGES), ids=[f"stage{i}" for i in SETTING_CHANGES])
def test_a_stage_setting_reruns_that_stage_and_later(finished: Path, tmp_path: Path, index: int) -> None:
    key, value = SETTING_CHANGES[index]
    stages = list(STAGES)
    name = stages[index] if isinstance(stages[index], str) else next(iter(stages[index]))
    settings = {} if isinstance(stages[index], str) else dict(stages[index][name])
    stages[index] = {name: {**settings, key: value}}
    assert rerun(finished, tmp_path, config(finished, stages)) == reran_from(index)


@pytest.mark.parametrize(
    "change",
    ["model file contents", "data file contents", "package version", "edgeslim source", "seed", "measurement"],
)
def test_a_run_wide_input_reruns_every_stage(finished: Path, tmp_path: Path, monkeypatch, change: str) -> None:
    overrides: dict[str, Any] = {}
    files: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if change == "model file contents":  # same path, other weights
        files = rewritten(finished / "start.safetensors", lambda: write_model(finished, seed=1))
    elif change == "data file contents":  # same path, 20 fewer images
        files = rewritten(finished / "digits.npz", lambda: write_data(finished, samples=480))
    elif change in ("package version", "edgeslim source"):
        versions = runner_module.package_versions()
        key = "onnxruntime" if change == "package version" else "edgeslim_source"
        monkeypatch.setattr(runner_module, "package_versions", lambda: {**versions, key: "changed"})
    elif change == "seed":
        overrides["seed"] = 1
    elif change == "measurement":
        overrides["measure"] = {"warmup": 2, "runs": 11, "max_seconds": 1.0}
    with files:
        assert rerun(finished, tmp_path, config(finished, **overrides)) == reran_from(0)
