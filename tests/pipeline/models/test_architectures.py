"""The built-in standard architectures (resnet18, mobilenet_v3_small, efficientnet_b0, vit_tiny) at a
tiny size: forward shape, ONNX export with ONNX Runtime parity, and one step of the prune stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.config.schema import DataSpec, ModelSpec
from edgeslim.data.datasets import DataSplits, load_data
from edgeslim.engine.store import TORCH, Artifact
from edgeslim.export.onnx_io import export_onnx, open_session
from edgeslim.models.loader import ModelLoader
from edgeslim.models.zoo import BUILTIN_MODELS, build_model
from edgeslim.train.loop import recalibrate_batchnorm
from tests.conftest import make_context, stage_for

SIZE = 16
# Tiny widths so that the whole file runs in well under a minute on two cores.
TINY: dict[str, dict] = {
    "resnet18": {"width_mult": 0.125},
    "mobilenet_v3_small": {"width_mult": 0.25},
    "efficientnet_b0": {"width_mult": 0.25, "depth_mult": 0.34},
    "vit_tiny": {"image_size": SIZE, "patch_size": 4, "dim": 48, "depth": 2, "num_heads": 3},
}


@pytest.fixture(scope="module")
def digits16() -> DataSplits:
    """Real 8x8 digits upsampled to 16x16 by ``data.image_size``."""
    return load_data(DataSpec(name="digits", max_samples=200, image_size=SIZE))


def _realistic(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Non-trivial BatchNorm scales (residual branches start at zero) and running statistics from data,
    so outputs are O(1), every branch contributes, and a parity check means something."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
    recalibrate_batchnorm(model, x, batches=2, batch_size=len(x))
    return model.eval()


def test_the_zoo_registers_the_standard_architectures():
    assert set(TINY) <= set(BUILTIN_MODELS)


@pytest.mark.parametrize("name", list(TINY))
def test_forward_gives_logits(name):
    model = build_model(name, TINY[name], in_channels=1, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, SIZE, SIZE)).shape == (3, 7)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet18", {"small_input": False}), ("vit_tiny", {"pool": "mean"}), ("mobilenet_v3_small", {"width_mult": 1})],
)
def test_variants_give_logits(name, kwargs):
    model = build_model(name, {**TINY[name], **kwargs}, in_channels=3, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)


def test_vit_refuses_other_image_sizes_with_a_hint():
    model = build_model("vit_tiny", TINY["vit_tiny"], in_channels=1, num_classes=10)
    with pytest.raises(ValueError, match=r"built for 16x16 inputs, got 8x8 .*image_size"):
        model(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("name", list(TINY))
def test_onnx_export_matches_onnxruntime(tmp_path, digits16, name):
    torch.manual_seed(0)
    x = digits16.train.tensors[0][:32]
    model = _realistic(build_model(name, TINY[name], in_channels=1, num_classes=10), x)
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.std() > 1e-3  # not a vanishing output, for which any parity holds
    path = export_onnx(model, x[:2], tmp_path / "model.onnx")
    got = open_session(path).run(None, {"input": x.numpy()})[0]  # batch 32: the batch axis is dynamic
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("name", list(TINY))
def test_the_prune_stage_shrinks_it_and_rebuilds_it(tmp_path, digits16, name):
    loader = ModelLoader(ModelSpec(name=name, kwargs=TINY[name]), 1, digits16.num_classes, digits16.example_batch(2))
    stages = [{"prune": {"importance": "hessian", "pruning_ratio": 0.5, "calibration_samples": 16}}]
    source = Artifact(kind=TORCH, directory=None)
    result = stage_for(stages).execute(make_context(tmp_path, digits16, loader, source, stages))
    assert result.details["params_after"] < 0.5 * result.details["params_before"]
    # Rebuilt from architecture + pruning history + weights, it runs and gives the class logits.
    model = loader.load(result.artifact)
    x = digits16.test.tensors[0][:8]
    with torch.no_grad():
        assert model(x).shape == (8, digits16.num_classes)
    assert sum(p.numel() for p in model.parameters()) == result.details["params_after"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_residual_branches_start_at_zero_when_asked(name):
    def last_bn_weights(zero: bool) -> list[torch.Tensor]:
        model = build_model(name, {**TINY[name], "zero_init_residual": zero}, in_channels=1, num_classes=10)
        return [m.last_bn.weight for m in model.modules() if getattr(m, "use_residual", False)]

    assert last_bn_weights(True) and all(not w.any() for w in last_bn_weights(True))
    assert all(bool((w == 1).all()) for w in last_bn_weights(False))
