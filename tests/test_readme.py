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
