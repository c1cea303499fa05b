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


def _reviews(n: int = 64):
    from edgeslim.api import parse_config
    from edgeslim.data.datasets import load_data

    cfg = {"name": "t", "model": {"name": "text_cnn"}, "stages": ["baseline"]}
    cfg["data"] = {"name": "rotten_tomatoes", "max_length": 48, "max_samples": 300}
    return load_data(parse_config(cfg).data).train.head(n)


def test_token_deletion_and_swaps_keep_cls_sep_padding_and_mask_consistent():
    from edgeslim.data.augment import augment_tokens

    x = _reviews()
    cfg = AugmentConfig(token_delete=0.2, token_swap=0.1)
    out = augment_tokens(x, cfg, torch.Generator().manual_seed(0))
    again = augment_tokens(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out["input_ids"], again["input_ids"])  # seeded
    ids, mask = x["input_ids"], x["attention_mask"]
    new_ids, new_mask = out["input_ids"], out["attention_mask"]
    assert new_ids.shape == ids.shape and new_ids.dtype == torch.int64
    lengths, new_lengths = mask.sum(1), new_mask.sum(1)
    assert (new_lengths <= lengths).all() and (new_lengths < lengths).float().mean() > 0.5  # most texts lose tokens
    assert torch.equal(new_mask, (torch.arange(48) < new_lengths[:, None]).long())  # still right-padded
    assert (new_ids[new_mask == 0] == ids[mask == 0][0]).all()  # freed positions are padding
    for i in range(len(ids)):
        n, m = int(lengths[i]), int(new_lengths[i])
        assert new_ids[i, 0] == ids[i, 0] and new_ids[i, m - 1] == ids[i, n - 1]  # [CLS] ... [SEP] stay
        assert set(new_ids[i, 1 : m - 1].tolist()) <= set(ids[i, 1 : n - 1].tolist())  # only its own tokens


def test_token_options_need_token_inputs_and_image_options_need_images(data):
    import pytest

    from edgeslim.data.augment import check_augment
    from edgeslim.errors import UserError

    with pytest.raises(UserError, match=r"^f\.augment: token_delete/token_swap need input_ids and attention_mask"):
        check_augment(AugmentConfig(token_delete=0.1), data.train.head(1), "f.augment")
    with pytest.raises(UserError, match=r"^f\.augment: shift/rotate/scale/noise work on image tensors"):
        check_augment(AugmentConfig(shift=1), _reviews(1), "f.augment")
    check_augment(AugmentConfig(token_swap=0.1), _reviews(1), "f.augment")
