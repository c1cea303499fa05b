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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeslim import cli
from edgeslim.engine.store import hash_tree
from tests.bad_inputs.setups import SETUPS
from tests.conftest import small_config, write_config

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))
BASE_STAGES: list[Any] = ["baseline"]  # the earlier run every case starts from
REPORT_FILES = {"report.json", "report.md", "report.html", "measurements.json", "error.log"}


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


@dataclass
class Outcome:
    code: int
    stderr: str
    earlier_run_intact: bool
    leftovers: list[str]
    case_dir: Path

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_case(case: dict[str, Any], template: Path, work: Path) -> Outcome:
    """Copy the finished run into ``work/out``, make the case's files, run it, and record what happened."""
    case_dir = work / "case"
    case_dir.mkdir(parents=True)
    out = work / "out"
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
    return Outcome(code, stderr, after == before, leftovers, case_dir)


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case_file", CASES, ids=[p.stem for p in CASES])
def test_bad_input(case_file: Path, template: Path, tmp_path: Path) -> None:
    case = load_case(case_file)
    outcome = run_case(case, template, tmp_path)
    assert outcome.code == case.get("exit_code", 2), outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert outcome.last_line.startswith("edgeslim: error: "), outcome.stderr
    assert re.search(case["expect"], outcome.last_line), f"{outcome.last_line!r} does not match {case['expect']!r}"
    assert outcome.earlier_run_intact, "an earlier artifact changed or a new one appeared"
    assert outcome.leftovers == [], f"leftovers in the output folder: {outcome.leftovers}"
    if case.get("must_not_exist"):
        assert not Path(substitute(case["must_not_exist"], outcome.case_dir)).exists(), "untrusted code ran"


def test_missing_config_file(tmp_path: Path) -> None:
    code, stderr = run_cli(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")])
    assert code == 2 and re.search(r"edgeslim: error: .*nope\.yaml", stderr.strip().splitlines()[-1]), stderr
