"""The CLI as a user meets it: exit codes, one-line errors, no tracebacks, nothing lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeslim.engine.store import hash_tree
from tests.conftest import small_config, write_config

ROOT = Path(__file__).resolve().parents[2]


def edgeslim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edgeslim.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], pattern: str, code: int = 2) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("edgeslim: error: "), proc.stderr
    import re

    assert re.search(pattern, lines[-1]), lines[-1]


def test_help_on_every_command(tmp_path):
    for args in (["--help"], ["run", "--help"], ["report", "--help"], ["search", "--help"]):
        proc = edgeslim(*args, cwd=tmp_path)
        assert proc.returncode == 0 and "usage: edgeslim" in proc.stdout


# The full catalogue of bad inputs (71 cases, run in-process) is tests/bad_inputs; these two check the same
# contract through a real process: exit code, one line, no traceback.
@pytest.mark.parametrize(
    ("cfg", "pattern"),
    [
        (
            small_config([{"prune": {"pruning_ratio": 1.0}}]),
            r"stages\[0\]\.prune\.pruning_ratio: Input should be less",
        ),
        (
            small_config(["baseline"], model={"name": "tests.helpers.factories:broken_model"}),
            r"model\.name: factory 'tests\.helpers\.factories:broken_model' raised RuntimeError: weights server",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, cfg, pattern):
    proc = edgeslim("run", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "out"), cwd=ROOT)
    assert_one_line_error(proc, pattern)


def test_missing_config_and_malformed_yaml(tmp_path):
    assert_one_line_error(edgeslim("run", "nope.yaml", cwd=tmp_path), r"config file not found: nope\.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    assert_one_line_error(edgeslim("run", "bad.yaml", cwd=tmp_path), r"bad\.yaml: malformed YAML at line")


def test_pickled_checkpoint_is_refused_not_loaded(tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weight": Evil()}, payload)
    cfg = small_config(["baseline"], model={"name": "tiny_cnn", "checkpoint": str(payload)})
    proc = edgeslim("run", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "out"), cwd=ROOT)
    assert_one_line_error(proc, r"model\.checkpoint: refused .*evil\.pt: it holds pickled Python objects")
    assert not marker.exists()


def test_user_model_and_data_factories_run_end_to_end(tmp_path):
    cfg = small_config(
        ["train", "baseline", {"prune": {"importance": "l1", "pruning_ratio": 0.25}}, "export"],
        model={"name": "tests.helpers.factories:small_mlp", "kwargs": {"hidden": 32}},
        data={"name": "tests.helpers.factories:digits_splits", "kwargs": {"n": 300}},
    )
    proc = edgeslim("run", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "out"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "03-export" in proc.stdout


def edgeslim_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as the installed ``edgeslim`` script starts it: ``-P`` keeps the current folder off
    ``sys.path`` (``python -m`` would put it there) and no PYTHONPATH, so only edgeslim can add folders."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-P", "-m", "edgeslim.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


FACTORY_MODULE = """
import torch
from sklearn.datasets import load_digits
from torch import nn


def build(hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def splits():
    bunch = load_digits()
    x = torch.tensor(bunch.data[:300], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target[:300])
    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])
"""


def test_a_factory_module_beside_the_config_is_found_from_another_folder(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "tabnet.py").write_text(FACTORY_MODULE)
    cfg = small_config(["baseline"], model={"name": "tabnet:build"}, data={"name": "tabnet:splits"})
    config = write_config(project / "run.yaml", cfg)
    proc = edgeslim_script("run", str(config), "--out", str(tmp_path / "out"), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "00-baseline" in proc.stdout


def raising_factory(message: str) -> str:
    return f"def splits():\n    raise RuntimeError('{message}')\n\n\nbuild = splits\n"


def test_factories_are_imported_from_the_config_folder_then_the_current_folder(tmp_path):
    here, configs = tmp_path / "here", tmp_path / "configs"
    here.mkdir()
    configs.mkdir()
    (here / "shadow.py").write_text(raising_factory("from the current folder"))
    (configs / "shadow.py").write_text(raising_factory("from the config folder"))
    (here / "only_here.py").write_text(raising_factory("found in the current folder"))

    def run(**keys: object) -> subprocess.CompletedProcess[str]:
        config = write_config(configs / "c.yaml", small_config(["baseline"], **keys))
        return edgeslim_script("run", str(config), "--out", str(tmp_path / "out"), cwd=here)

    # the config's folder comes first: its shadow.py wins over the current folder's
    proc = run(data={"name": "shadow:splits"})
    expected = r"^edgeslim: error: data\.name: factory 'shadow:splits' raised RuntimeError: from the config folder$"
    assert_one_line_error(proc, expected)
    # the current folder is searched too
    proc = run(model={"name": "only_here:build"})
    expected = r"^edgeslim: error: model\.name: factory 'only_here:build' raised RuntimeError: found in the current"
    assert_one_line_error(proc, expected)
    # still not found: one line naming the key, the module and both folders
    proc = run(data={"name": "no_such_module_here.sub:splits"})
    folders = rf"{re.escape(str(configs.resolve()))}, {re.escape(str(here.resolve()))} or the installed packages"
    assert_one_line_error(
        proc,
        rf"^edgeslim: error: data\.name: cannot import module 'no_such_module_here\.sub': "
        rf"no module named 'no_such_module_here' in {folders}$",
    )


def test_failure_in_a_later_stage_keeps_earlier_artifacts_byte_identical(tmp_path):
    good = small_config(["train", "baseline"])
    out = tmp_path / "out"
    assert edgeslim("run", str(write_config(tmp_path / "c.yaml", good)), "--out", str(out), cwd=ROOT).returncode == 0
    before = {d.name: hash_tree(d, exclude=()) for d in (out / "t").iterdir() if d.is_dir()}
    diverging = small_config(
        [
            "train",
            "baseline",
            {
                "finetune": {
                    "optimizer": {"name": "sgd", "lr": 1e6, "momentum": 0.0},
                    "schedule": {"name": "constant"},
                    "batch_size": 32,
                }
            },
        ]
    )
    proc = edgeslim("run", str(write_config(tmp_path / "c.yaml", diverging)), "--out", str(out), cwd=ROOT)
    assert_one_line_error(proc, r"stages\[2\]\.finetune: training diverged \(loss is nan")
    after = {d.name: hash_tree(d, exclude=()) for d in (out / "t").iterdir() if d.is_dir()}
    assert after == before  # nothing partial left behind, earlier stages untouched
    assert not any(p.name.startswith(".") and p.name != ".lock" for p in (out / "t").iterdir())
    import json

    report = json.loads((out / "t" / "report.json").read_text())
    assert report["stages"][-1]["status"] == "failed" and "diverged" in report["stages"][-1]["error"]


def test_unwritable_output_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    cfg = write_config(tmp_path / "c.yaml", small_config(["baseline"]))
    assert_one_line_error(edgeslim("run", str(cfg), "--out", str(locked), cwd=ROOT), r"cannot (create|write)")


def test_output_path_blocked_by_a_file(tmp_path):
    blocker = tmp_path / "occupied"
    blocker.write_text("not a folder")
    cfg = write_config(tmp_path / "c.yaml", small_config(["baseline"]))
    proc = edgeslim("run", str(cfg), "--out", str(blocker), cwd=ROOT)
    assert_one_line_error(proc, r"cannot create output folder .*occupied/t")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(("signum", "code", "word"), [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_a_stop_request_that_a_native_library_turns_into_another_error_still_stops(
    monkeypatch, capsys, tmp_path, signum, code, word
) -> None:
    """safetensors' Rust reader can hand Ctrl-C back as a ValueError; the stage then fails with it.
    The recorded signal decides the exit, not the error it caused."""
    import signal

    from edgeslim import cli
    from edgeslim.errors import StageFailed

    def run_hit_by_a_signal(args, console) -> int:
        try:
            cli._on_signal(signum, None)
        except BaseException:  # what the native library does with it
            raise StageFailed("stages[3].finetune: ValueError: could not determine the shape") from None
        return 0

    monkeypatch.setattr(cli, "_cmd_run", run_hit_by_a_signal)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["run", str(tmp_path / "x.yaml")]) == code
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert f"edgeslim: {word};" in capsys.readouterr().err


def test_search_mistakes_are_one_line_errors(tmp_path):
    cfg = small_config(["baseline", {"prune": {"pruning_ratio": 0.5}}])
    write_config(tmp_path / "plain.yaml", cfg)
    assert_one_line_error(edgeslim("search", "plain.yaml", cwd=tmp_path), r"no search: block")
    cfg["search"] = {"space": {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.9}}, "trails": 3}
    write_config(tmp_path / "typo.yaml", cfg)
    assert_one_line_error(edgeslim("search", "typo.yaml", cwd=tmp_path), r"search\.trails: unknown key; allowed keys")
    cfg["search"] = {"space": {"stages.quantize.method": ["dynamic"]}, "trials": 3}
    write_config(tmp_path / "space.yaml", cfg)
    assert_one_line_error(
        edgeslim("search", "space.yaml", cwd=tmp_path), r"search\.space\.stages\.quantize\.method: no quantize stage"
    )
    cfg["search"] = {"space": {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.9}}, "trials": 3}
    write_config(tmp_path / "ok.yaml", cfg)
    proc = edgeslim("search", "ok.yaml", "--export-best", cwd=tmp_path)
    assert_one_line_error(proc, r"no readable search\.json in artifacts/t \(is it a search folder\?\)")
    assert_one_line_error(edgeslim("search", "ok.yaml", "--max-drop", "1", cwd=tmp_path), r"go with --export-best")
