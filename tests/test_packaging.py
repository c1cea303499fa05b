"""A plain wheel install works: one ``edgeslim`` package in site-packages, console scripts, a real run.

The fresh venv gets the wheel alone (``--no-deps``); its third-party packages come from the
project's environment through a ``.pth`` line, so the test costs seconds, not a torch install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(*cmd: str | Path, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv itself provides
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{cmd}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", dist, ROOT)
    (path,) = dist.glob("edgeslim-*.whl")
    return path


def test_the_wheel_holds_one_edgeslim_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"edgeslim"}
    for module in ("edgeslim/__init__.py", "edgeslim/api.py", "edgeslim/engine/runner.py", "edgeslim/stages/prune.py"):
        assert module in names


def test_a_fresh_venv_with_the_wheel_runs_the_digits_config(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    site = Path(
        sh(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    )
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel)
    assert not (site / "pipeline").exists() and not (site / "stages").exists()
    work = tmp_path / "elsewhere"  # not the repository: nothing can come from its folders
    work.mkdir()
    code = "import edgeslim, edgeslim.stages; print(edgeslim.__file__); print(sorted(edgeslim.stage_types()))"
    shown = sh(venv / "bin" / "python", "-c", code, cwd=work).stdout.splitlines()
    assert shown[0].startswith(str(site / "edgeslim"))
    assert shown[1] == str(["baseline", "benchmark", "export", "finetune", "meta_init", "prune", "quantize", "train"])
    sh(venv / "bin" / "edgeslim", "run", ROOT / "configs" / "digits_quick.yaml", "--out", work / "out", cwd=work)
    report = (work / "out" / "digits_quick" / "report.md").read_text()
    assert "06-benchmark | ran" in report
    sh(venv / "bin" / "edgeslim-bench", "--help", cwd=work)
