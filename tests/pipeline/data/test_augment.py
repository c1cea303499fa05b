from __future__ import annotations

import torch

from edgeslim.data.augment import AugmentConfig, augment_batch


def test_identity_when_everything_is_zero(data):
    x = data.train.tensors[0][:8]
    out = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)


def test_shift_moves_the_digit_and_keeps_shape(data):
    x = data.train.tensors[0][:32]
    out = augment_batch(x, AugmentConfig(shift=2, rotate=15, scale=0.1), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out - x).abs().mean() > 0.05  # images changed


def test_padding_repeats_the_border_not_zeros():
    background = torch.full((4, 1, 8, 8), -1.0)  # normalised blank digits
    out = augment_batch(background, AugmentConfig(shift=3, rotate=30, scale=0.2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, background)


def test_noise_only_for_non_images():
    x = torch.zeros(4, 10)
    out = augment_batch(x, AugmentConfig(shift=2, noise=0.5), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0.3 < out.std() < 0.7
