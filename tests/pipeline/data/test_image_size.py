"""``data.image_size``: image inputs are resized once at load (bilinear), and it is part of the fingerprint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeslim.config.schema import DataSpec
from edgeslim.data.datasets import load_data
from edgeslim.errors import UserError

DIGITS = {"name": "digits", "max_samples": 100}


def test_image_size_resizes_every_split_bilinearly():
    plain = load_data(DataSpec(**DIGITS))
    resized = load_data(DataSpec(**DIGITS, image_size=16))
    assert plain.input_shape == (1, 8, 8) and resized.input_shape == (1, 16, 16)
    for before, after in zip(
        (plain.train, plain.val, plain.test), (resized.train, resized.val, resized.test), strict=True
    ):
        expected = F.interpolate(before.tensors[0], size=(16, 16), mode="bilinear", align_corners=False)
        torch.testing.assert_close(after.tensors[0], expected)
        assert torch.equal(after.tensors[1], before.tensors[1])  # same split, same labels
    assert resized.fingerprint != plain.fingerprint
    assert "resized to 16x16 (bilinear)" in resized.preprocessing.raw_input  # the phone bundle says so


def test_the_native_size_keeps_the_pixels_but_not_the_fingerprint():
    plain = load_data(DataSpec(**DIGITS))
    same = load_data(DataSpec(**DIGITS, image_size=8))
    assert torch.equal(same.train.tensors[0], plain.train.tensors[0])
    assert same.fingerprint != plain.fingerprint  # image_size is in the fingerprint's meta


def flat_features():
    x = torch.randn(60, 12)
    y = torch.arange(60) % 2
    return (x[:40], y[:40]), (x[40:50], y[40:50]), (x[50:], y[50:])


def test_image_size_on_non_image_inputs_is_a_one_line_user_error():
    spec = DataSpec(name=f"{__name__}:flat_features", image_size=32)
    with pytest.raises(UserError, match=r"^data\.image_size: inputs of shape \(12,\) are not images") as err:
        load_data(spec)
    assert "\n" not in str(err.value)


def test_image_size_must_be_positive():
    with pytest.raises(ValueError, match="image_size"):
        DataSpec(name="digits", image_size=0)
