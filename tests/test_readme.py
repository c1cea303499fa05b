"""The README's config examples are real: each one validates against the stage's schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edgeslim.api import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"


def finetune_examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Fine-tuning options", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


def test_every_finetune_option_has_an_example() -> None:
    assert len(finetune_examples()) >= 8


@pytest.mark.parametrize("example", finetune_examples())
def test_finetune_example_validates(example: str) -> None:
    settings = yaml.safe_load(example)
    if "hint" in settings.get("distill", {}):
        settings["qat"] = False
    config = parse_config(
        {
            "name": "readme",
            "model": {"name": "tiny_cnn"},
            "data": {"name": "digits"},
            "stages": ["baseline", {"finetune": settings}],
        }
    )
    finetune = config.stages[1].settings
    for key in settings:
        assert key in type(finetune).model_fields


def python_api_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_python_api_example_runs(tmp_path: Path) -> None:
    """The README's Python example, run as a user would (its own process, its own folder)."""
    import subprocess
    import sys

    script = tmp_path / "example.py"
    script.write_text(python_api_example())
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines[:5]]
    assert [row[:2] for row in rows] == [
        ["00-train", "ran"],
        ["01-baseline", "ran"],
        ["02-prune", "ran"],
        ["03-finetune", "ran"],
        ["04-export", "ran"],
    ]
    assert float(rows[-1][2].rstrip("%")) > 70  # pruned and fine-tuned, it still classifies digits
    assert lines[5] == "ship: artifacts/readme_api/04-export/model.onnx"
    assert lines[6] == "stages[0].prune.pruning_ratio: Input should be less than 1 (got 1.5)"
    assert (tmp_path / "artifacts" / "readme_api" / "report.md").is_file()


def test_pruning_options_example_validates() -> None:
    section = README.read_text().split("## Pruning options", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    stages = yaml.safe_load(example)["stages"]
    config = parse_config(
        {"name": "readme", "model": {"name": "tiny_cnn"}, "data": {"name": "digits"}, "stages": stages}
    )
    prune = config.stages[0].settings
    assert prune.head_pruning_ratio == 0.5 and set(stages[0]["prune"]) <= set(type(prune).model_fields)


def bring_your_own_examples() -> list[str]:
    section = README.read_text().split("## Bring your own model and data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


def test_bring_your_own_has_image_text_and_hf_examples() -> None:
    text = "\n".join(bring_your_own_examples())
    assert "image_folder" in text and "text_csv" in text and "hf: all-MiniLM-L6-v2" in text
    assert "exporter: optimum" in text


@pytest.mark.parametrize("example", bring_your_own_examples())
def test_bring_your_own_example_validates(example: str, tmp_path: Path) -> None:
    settings = yaml.safe_load(example)
    stages = settings.pop("stages", ["baseline"])
    config = parse_config({"name": "readme", "stages": stages, **settings}, base_dir=tmp_path)
    for section, values in settings.items():
        for key in values:
            assert key in type(getattr(config, section)).model_fields
    for entry, given in zip(config.stages, stages, strict=True):
        for options in given.values() if isinstance(given, dict) else []:
            assert set(options) <= set(type(entry.settings).model_fields)
