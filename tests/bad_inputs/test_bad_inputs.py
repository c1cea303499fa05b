"""Every case in ``cases/`` is a real bad input fed to ``edgeslim run``; each must end in one
line naming the problem, the documented exit code, no traceback, and an earlier run's artifacts
left byte for byte as they were.

A case is a YAML file: ``what`` (one line), ``config`` (keys replacing those of the base config
below) or ``config_text`` (the file's raw text), optional ``setup`` (a function in setups.py that
makes the files it needs), ``expect`` (a regex the error line must match), optional ``exit_code``
(default 2) and ``must_not_exist`` (a file whose existence would prove untrusted code ran).
``{case}`` in any string is the case's own folder. See README.md to add one.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import cli
from pipeline.artifacts import hash_tree
from tests.bad_inputs.setups import SETUPS
from tests.conftest import small_config, write_config

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))
BASE_STAGES: list[Any] = ["baseline"]  # the earlier run every case starts from
REPORT_FILES = {"report.json", "report.md", "report.html"}


def load_case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text())
    assert set(case) <= {"what", "config", "config_text", "setup", "expect", "exit_code", "must_not_exist"}, path
    assert case.get("setup") is None or case["setup"] in SETUPS, f"{path.name}: unknown setup {case['setup']}"
    return case


def substitute(value: Any, case_dir: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{case}", str(case_dir))
    if isinstance(value, list):
        return [substitute(v, case_dir) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, case_dir) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output root holding one finished run (``t``): what a user has before the bad input."""
    root = tmp_path_factory.mktemp("template")
    config = write_config(root / "base.yaml", small_config(BASE_STAGES))
    assert cli.main(["run", str(config), "--out", str(root / "out")]) == 0
    return root / "out"


def run_cli(args: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(args)
    return code, stderr.getvalue()


def stage_files(out: Path) -> dict[str, str]:
    """Every file of the earlier run ``t`` except its reports (a failed stage is recorded in those).

    A case that names another run (``name:``) may leave that run's finished stages behind; the
    earlier run must not change either way."""
    return {k: v for k, v in hash_tree(out / "t").items() if Path(k).name not in REPORT_FILES}


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case_file", CASES, ids=[p.stem for p in CASES])
def test_bad_input(case_file: Path, template: Path, tmp_path: Path) -> None:
    case = load_case(case_file)
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    out = tmp_path / "out"
    shutil.copytree(template, out)
    if "config_text" in case:
        config_path = case_dir / "config.yaml"
        config_path.write_text(substitute(case["config_text"], case_dir))
    else:
        overrides = substitute(case.get("config", {}), case_dir)
        config_path = write_config(case_dir / "config.yaml", {**small_config(BASE_STAGES), **overrides})
    setup = SETUPS[case["setup"]] if case.get("setup") else None
    with setup(case_dir, out, template) if setup else contextlib.nullcontext(out) as run_out:
        before = stage_files(run_out) if (run_out / "t").is_dir() else {}
        code, stderr = run_cli(["run", str(config_path), "--out", str(run_out)])
        after = stage_files(run_out) if (run_out / "t").is_dir() else {}
        leftovers = [p.name for p in run_out.rglob(".*")] if run_out.is_dir() else []

    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == case.get("exit_code", 2), stderr
    assert "Traceback" not in stderr
    assert lines and lines[-1].startswith("edgeslim: error: "), stderr
    assert re.search(case["expect"], lines[-1]), f"{lines[-1]!r} does not match {case['expect']!r}"
    assert after == before, "an earlier artifact changed or a new one appeared"
    assert leftovers == [], f"leftovers in the output folder: {leftovers}"
    if case.get("must_not_exist"):
        assert not Path(substitute(case["must_not_exist"], case_dir)).exists(), "untrusted code ran"


def test_missing_config_file(tmp_path: Path) -> None:
    code, stderr = run_cli(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")])
    assert code == 2 and re.search(r"edgeslim: error: .*nope\.yaml", stderr.strip().splitlines()[-1]), stderr
