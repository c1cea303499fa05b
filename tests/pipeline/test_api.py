"""The Python API: run from a dict, typed results, one UserError type, user-registered stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import Field

import edgeslim
from edgeslim.api import _EXTRA_STAGES
from edgeslim.config.schema import StrictModel
from edgeslim.engine.stage import Stage, StageContext, StageResult, save_same_architecture
from edgeslim.engine.store import TORCH
from tests.conftest import small_config


class ScaleConfig(StrictModel):
    factor: float = Field(0.5, gt=0, le=1)


class ScaleClassifier(Stage[ScaleConfig]):
    """The architecture guide's example: a user stage with a typed config."""

    name = "scale_classifier"
    accepts = (TORCH,)

    def run(self, ctx: StageContext, cfg: ScaleConfig) -> StageResult:
        model = ctx.models.load(ctx.input)
        with torch.no_grad():
            model.classifier.weight.mul_(cfg.factor)  # logits scaled: argmax and accuracy stay the same
            model.classifier.bias.mul_(cfg.factor)
        return StageResult(save_same_architecture(ctx, model), notes=[f"scaled by {cfg.factor}"])


@pytest.fixture
def custom_stage():
    edgeslim.register_stage(ScaleClassifier)
    yield
    _EXTRA_STAGES.pop("scale_classifier", None)


def test_run_a_dict_with_a_user_stage_and_read_it_back(tmp_path: Path, custom_stage) -> None:
    stages = [{"train": {"epochs": 2, "batch_size": 32}}, "baseline", {"scale_classifier": {"factor": 0.25}}]
    result = edgeslim.run(small_config(stages), out=tmp_path)
    assert isinstance(result, edgeslim.RunResult)
    assert [s.label for s in result.stages] == ["00-train", "01-baseline", "02-scale_classifier"]
    assert [s.role for s in result.stages] == ["transform", "reference", "transform"]
    scaled, base = result.stage("scale_classifier"), result.stage("baseline")
    assert scaled.metrics.accuracy == base.metrics.accuracy
    assert scaled.notes == ["scaled by 0.25"]
    assert result.deliverable == tmp_path / "t" / "02-scale_classifier" / "deploy.onnx"
    assert result.deliverable.is_file() and result.report_md.is_file()
    again = edgeslim.open_run(result.run_dir)
    # report.json is the same schema, read back (JSON turns the in-memory int keys of details into strings)
    assert again.report.to_json() == json.loads(json.dumps(result.report.to_json()))
    assert [s.status for s in edgeslim.run(small_config(stages), out=tmp_path).stages] == ["cached"] * 3


def test_user_mistakes_raise_one_user_error(tmp_path: Path, custom_stage) -> None:
    with pytest.raises(edgeslim.UserError, match=r"^stages\[0\]\.scale_classifier\.factor: Input should be"):
        edgeslim.parse_config(small_config([{"scale_classifier": {"factor": 2}}]))
    with pytest.raises(edgeslim.UserError, match=r"^config file not found: "):
        edgeslim.run(tmp_path / "missing.yaml")
    with pytest.raises(edgeslim.UserError, match=r"^no report\.json in "):
        edgeslim.open_run(tmp_path)
    with pytest.raises(edgeslim.UserError, match="a built-in stage is already named 'prune'"):

        class Prune(ScaleClassifier):
            name = "prune"

        edgeslim.register_stage(Prune)


def test_config_sources_agree(tmp_path: Path) -> None:
    import yaml

    raw = small_config(["baseline"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    from_dict, from_file = edgeslim.parse_config(raw), edgeslim.load_config(path)
    assert from_dict.to_plain() == from_file.to_plain()
    assert edgeslim.api.as_config(from_dict) is from_dict


class _ResidualNet(torch.nn.Module):
    """A notebook-style model edgeslim does not know: a residual block and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.block = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16))
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        return self.head(h.mean(dim=(2, 3)))


def _digits_loaders() -> tuple:
    """scikit-learn's real digits as the user's own DataLoaders (train, val, test)."""
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    parts = [(0, 900), (900, 1100), (1100, 1400)]
    return tuple(DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=64) for a, b in parts)


def test_run_with_the_users_own_module_and_data_loaders(tmp_path: Path) -> None:
    """``edgeslim.run(config, model=module, data=(train, val, test))``: the module is snapshotted (the
    user's object is never pruned in place), its class source and weights key the cache."""
    torch.manual_seed(0)
    net = _ResidualNet()
    before = sum(p.numel() for p in net.parameters())
    train = {"epochs": 5, "batch_size": 32, "optimizer": {"lr": 0.01}}
    cfg = small_config([{"train": train}, "baseline", {"prune": {"pruning_ratio": 0.3}}])
    del cfg["data"]
    result = edgeslim.run(cfg, out=tmp_path, model=net, data=_digits_loaders())
    assert [s.status for s in result.stages] == ["ran"] * 3
    assert result.stage("baseline").metrics.accuracy > 0.5  # trained on real digits
    assert result.stage("prune").metrics.params < before
    assert sum(p.numel() for p in net.parameters()) == before  # the user's module is untouched
    assert result.report.config["model"]["name"].startswith("python:_ResidualNet@")
    again = edgeslim.run(cfg, out=tmp_path, model=net, data=_digits_loaders())
    assert [s.status for s in again.stages] == ["cached"] * 3
    with torch.no_grad():
        net.head.bias.add_(1.0)  # other weights: another model, so its stages run again
    changed = edgeslim.run(cfg, out=tmp_path, model=net, data=_digits_loaders())
    assert changed.stages[0].status == "ran"
    with pytest.raises(edgeslim.UserError, match=r"^model: expected an nn.Module"):
        edgeslim.run(cfg, out=tmp_path, model=42)
