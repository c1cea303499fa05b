"""The cache matrix: every input a stage or a measurement depends on, changed alone, re-runs
exactly what it affects, and nothing is reused from different inputs or different numerics code.

Two caches are checked separately: the *stage* cache (is the model made again? ``status``: ran /
cached) and the *measurement* cache (is the model timed again? ``measured``: fresh / cached).
One cell per row of docs/reliability.md's cache table. Each cell starts from a copy of one
finished run, changes one thing, and runs again in-process.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from edgeslim.api import parse_config
from edgeslim.api import run as run_pipeline
from edgeslim.engine import keys
from edgeslim.models.zoo import build_model
from tests.conftest import small_config

STAGES: list[Any] = [
    {"train": {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 0.01}}},
    "baseline",
    {"prune": {"importance": "l1", "pruning_ratio": 0.3}},
    {"finetune": {"epochs": 1, "batch_size": 32}},
    "export",
    {"quantize": {"calibration_samples": 32, "never_slower": False}},  # no timing-driven choice here
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
    report = run_pipeline(config(root), root / "out").report
    assert [s.status for s in report.stages] == ["ran"] * len(STAGES)
    assert [s.measured for s in report.stages] == ["fresh"] * len(STAGES)
    return root


ALL = len(STAGES)
NAMES = ["train", "baseline", "prune", "finetune", "export", "quantize", "benchmark"]


def reran_from(index: int) -> list[str]:
    return ["cached"] * index + ["ran"] * (ALL - index)


def rerun(finished: Path, tmp_path: Path, cfg) -> tuple[list[str], list[str]]:
    """Run ``cfg`` on a private copy of the finished run's output folder: (status, measured) per stage."""
    out = tmp_path / "out"
    shutil.copytree(finished / "out", out)
    stages = run_pipeline(cfg, out).report.stages
    return [s.status for s in stages], [str(s.measured) for s in stages]


@contextlib.contextmanager
def rewritten(path: Path, write: Callable[[], None]) -> Iterator[None]:
    """New bytes at the same path for one run (the config does not change), then the old ones back."""
    original = path.read_bytes()
    try:
        write()
        yield
    finally:
        path.write_bytes(original)


def edit_source(monkeypatch, module: str) -> None:
    """Simulate an edit of one edgeslim module: its file hashes differently from now on."""
    target = keys._module_file(module)
    assert target is not None, module
    real = keys.sha256_file
    monkeypatch.setattr(keys, "sha256_file", lambda p: "edited" if Path(p) == target else real(p))


def test_nothing_changed_reuses_everything(finished: Path, tmp_path: Path) -> None:
    assert rerun(finished, tmp_path, config(finished)) == (["cached"] * ALL, ["cached"] * ALL)


@pytest.mark.parametrize("index", sorted(SETTING_CHANGES), ids=[f"stage{i}" for i in SETTING_CHANGES])
def test_a_stage_setting_reruns_that_stage_and_later(finished: Path, tmp_path: Path, index: int) -> None:
    key, value = SETTING_CHANGES[index]
    stages = list(STAGES)
    name = stages[index] if isinstance(stages[index], str) else next(iter(stages[index]))
    settings = {} if isinstance(stages[index], str) else dict(stages[index][name])
    stages[index] = {name: {**settings, key: value}}
    status, measured = rerun(finished, tmp_path, config(finished, stages))
    assert status == reran_from(index)
    assert measured[:index] == ["cached"] * index  # models that did not change are not timed again


@pytest.mark.parametrize(
    "change", ["model file contents", "data file contents", "package version", "seed", "engine evaluation code"]
)
def test_a_run_wide_input_reruns_every_stage(finished: Path, tmp_path: Path, monkeypatch, change: str) -> None:
    overrides: dict[str, Any] = {}
    files: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if change == "model file contents":  # same path, other weights
        files = rewritten(finished / "start.safetensors", lambda: write_model(finished, seed=1))
    elif change == "data file contents":  # same path, 20 fewer images
        files = rewritten(finished / "digits.npz", lambda: write_data(finished, samples=480))
    elif change == "package version":
        versions = keys.package_versions()
        monkeypatch.setattr(keys, "package_versions", lambda **_: {**versions, "onnxruntime": "changed"})
    elif change == "seed":
        overrides["seed"] = 1
    elif change == "engine evaluation code":  # every stage's recorded accuracy comes from it
        edit_source(monkeypatch, "edgeslim.engine.evaluate")
    with files:
        status, _ = rerun(finished, tmp_path, config(finished, **overrides))
    assert status == reran_from(0)


@pytest.mark.parametrize(
    ("change", "overrides"),
    [
        ("measure.runs", {"measure": {"warmup": 2, "runs": 11, "max_seconds": 1.0}}),
        ("host profile", {"devices": [{"host": {"graph_optimization": "basic"}}]}),
    ],
)
def test_measurement_settings_re_measure_and_retrain_nothing(
    finished: Path, tmp_path: Path, change: str, overrides: dict[str, Any]
) -> None:
    status, measured = rerun(finished, tmp_path, config(finished, **overrides))
    # benchmark's output *is* measurements on the device profiles, so it runs again; nothing else does
    assert status == ["cached"] * (ALL - 1) + ["ran"]
    assert measured == ["fresh"] * ALL


def test_eval_batch_size_changes_nothing(finished: Path, tmp_path: Path) -> None:
    """It only sets how many samples an evaluation runs at once (only the benchmark re-evaluates)."""
    overrides = {"measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0, "eval_batch_size": 64}}
    status, measured = rerun(finished, tmp_path, config(finished, **overrides))
    assert status == ["cached"] * (ALL - 1) + ["ran"]
    assert measured == ["cached"] * ALL


@pytest.mark.parametrize(
    "module",
    [
        "edgeslim.reports.run_report",
        "edgeslim.reports.html",
        "edgeslim.reports.compare",
        "edgeslim.cli",
        "edgeslim.api",
        "edgeslim.engine.runner",
        "edgeslim.engine.records",
        "edgeslim.engine.progress",
    ],
)
def test_editing_report_cli_or_runner_code_retrains_nothing(
    finished: Path, tmp_path: Path, monkeypatch, module: str
) -> None:
    edit_source(monkeypatch, module)
    assert rerun(finished, tmp_path, config(finished)) == (["cached"] * ALL, ["cached"] * ALL)


def output_hashes(run_dir: Path) -> list[str]:
    return [json.loads((d / "manifest.json").read_text())["output_hash"] for d in sorted(run_dir.glob("0*"))]


def test_editing_the_prune_stage_reruns_prune_and_what_its_output_changes(
    finished: Path, tmp_path: Path, monkeypatch
) -> None:
    """Prune is made again by its new code. Later stages are keyed by prune's *output*: an edit that
    leaves the pruned model byte-identical (here: none of the numerics) reuses them, an edit that
    changes it re-runs every later stage. train and baseline are never touched."""
    edit_source(monkeypatch, "edgeslim.stages.prune")
    status, measured = rerun(finished, tmp_path, config(finished))
    assert status == ["cached", "cached", "ran", "cached", "cached", "cached", "cached"]
    assert measured[:2] == ["cached", "cached"]
    assert output_hashes(tmp_path / "out" / "t") == output_hashes(finished / "out" / "t")

    import edgeslim.stages.prune as prune_module

    monkeypatch.setattr(prune_module, "recalibrate_batchnorm", lambda *args: 0)  # an edit that changes results
    status, _ = rerun(finished, tmp_path / "changed", config(finished))
    assert status == reran_from(NAMES.index("prune"))


def test_editing_a_shared_module_reruns_the_stages_that_import_it(finished: Path, tmp_path: Path, monkeypatch) -> None:
    """ONNX Runtime quantization code is imported by quantize only: earlier stages are reused (and
    benchmark too, as long as quantize's model comes out byte-identical)."""
    assert "edgeslim.quant.ort" in keys.module_closure("edgeslim.stages.quantize")
    assert "edgeslim.quant.ort" not in keys.module_closure("edgeslim.stages.export")
    edit_source(monkeypatch, "edgeslim.quant.ort")
    status, _ = rerun(finished, tmp_path, config(finished))
    assert status == ["cached"] * NAMES.index("quantize") + ["ran", "cached"]


def test_editing_the_latency_code_re_measures_without_retraining(finished: Path, tmp_path: Path, monkeypatch) -> None:
    """Latency code joins the measurement key; only stages that themselves time models (prune's
    per-layer latency table, quantize's ``auto`` candidates, benchmark) import it, so only they re-run."""
    edit_source(monkeypatch, "edgeslim.engine.measure")
    status, measured = rerun(finished, tmp_path, config(finished))
    users = [n for n in NAMES if "edgeslim.engine.measure" in keys.module_closure(f"edgeslim.stages.{n}")]
    assert users == ["prune", "quantize", "benchmark"]
    assert status == ["ran" if n in users else "cached" for n in NAMES]
    assert measured == ["fresh"] * ALL
