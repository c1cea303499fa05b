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

    with pytest.raises(UserError, match=r"^f\.augment: token_delete/token_swap/token_synonym need input_ids and"):
        check_augment(AugmentConfig(token_delete=0.1), data.train.head(1), "f.augment")
    with pytest.raises(UserError, match=r"^f\.augment: shift/rotate/scale/noise work on image tensors"):
        check_augment(AugmentConfig(shift=1), _reviews(1), "f.augment")
    check_augment(AugmentConfig(token_swap=0.1), _reviews(1), "f.augment")


def _table(reviews):
    from edgeslim.data.augment import build_synonym_table
    from edgeslim.data.batches import seen_tokens

    return build_synonym_table(
        AugmentConfig(token_synonym=0.5), reviews.tokens.tokenizer, seen_tokens(reviews.train), "f"
    )


def test_synonym_replacement_uses_the_word_list_and_only_words_the_training_data_has(reviews):
    from transformers import AutoTokenizer

    from edgeslim.data.augment import augment_tokens
    from edgeslim.data.batches import seen_tokens

    table = _table(reviews)
    vocab = AutoTokenizer.from_pretrained(str(reviews.tokens.tokenizer), local_files_only=True).get_vocab()
    seen = seen_tokens(reviews.train)
    assert vocab["film"] in table.choices and vocab["movie"] in table.choices[vocab["film"]].tolist()
    assert all(set(c.tolist()) <= seen for c in table.choices.values())
    x = reviews.train.head(64)
    cfg = AugmentConfig(token_synonym=0.5)
    out = augment_tokens(x, cfg, torch.Generator().manual_seed(0), table)
    again = augment_tokens(x, cfg, torch.Generator().manual_seed(0), table)
    assert torch.equal(out["input_ids"], again["input_ids"])  # seeded
    assert torch.equal(out["attention_mask"], x["attention_mask"])  # one token for one: lengths kept
    changed = (out["input_ids"] != x["input_ids"]).nonzero().tolist()
    assert len(changed) > 10
    for i, j in changed:
        old, new = int(x["input_ids"][i, j]), int(out["input_ids"][i, j])
        assert new in table.choices[old].tolist()  # a synonym from the list, seen in training
    untouched = [int(t) for t in x["input_ids"][x["attention_mask"] == 1] if int(t) not in table.choices]
    assert untouched  # words without synonyms stay: checked through the positions above


def test_a_word_followed_by_a_word_piece_is_not_replaced(reviews):
    from transformers import AutoTokenizer

    from edgeslim.data.augment import replace_synonyms

    table = _table(reviews)
    vocab = AutoTokenizer.from_pretrained(str(reviews.tokens.tokenizer), local_files_only=True).get_vocab()
    film, piece = vocab["film"], vocab["##s"]
    tokens = torch.tensor([film, piece, film])
    out = replace_synonyms(tokens, 0.999, table, torch.Generator().manual_seed(0))
    assert out[0] == film and out[1] == piece and out[2] != film


def test_synonym_errors_name_the_setting(tmp_path, reviews):
    import pytest

    from edgeslim.data.augment import build_synonym_table, read_synonym_groups
    from edgeslim.errors import UserError
    from edgeslim.train.loop import TrainLoopConfig, fit

    with pytest.raises(UserError, match=r"^f\.synonyms: cannot read the word list"):
        read_synonym_groups(tmp_path / "missing.txt", "f")
    (tmp_path / "one.txt").write_text("# only single words\nalone\n")
    with pytest.raises(UserError, match=r"^f\.synonyms: .* has no group of two or more words"):
        read_synonym_groups(tmp_path / "one.txt", "f")
    (tmp_path / "rare.txt").write_text("zyzzyva quixotry\n")
    cfg = AugmentConfig(token_synonym=0.1, synonyms=tmp_path / "rare.txt")
    with pytest.raises(UserError, match=r"^f\.token_synonym: no word of .* has a synonym"):
        build_synonym_table(cfg, reviews.tokens.tokenizer, {1, 2}, "f")
    from edgeslim.models.zoo import TextCNN

    model = TextCNN(reviews.in_channels, reviews.num_classes, dim=8, width=8)
    loop = TrainLoopConfig(epochs=1, augment=AugmentConfig(token_synonym=0.1))
    with pytest.raises(UserError, match=r"^s\.augment\.token_synonym: needs text the pipeline tokenized"):
        fit(model, reviews.train, reviews.val, loop, where="s")


def test_training_with_synonyms_runs_through_the_train_stage_loop(reviews):
    from edgeslim.models.zoo import TextCNN
    from edgeslim.train.loop import TrainLoopConfig, fit

    model = TextCNN(reviews.in_channels, reviews.num_classes, dim=16, width=16)
    cfg = TrainLoopConfig(epochs=1, batch_size=64, augment=AugmentConfig(token_synonym=0.2, token_delete=0.1))
    result = fit(model, reviews.train, reviews.val, cfg, tokenizer=reviews.tokens.tokenizer)
    assert result.history and 0.0 <= result.best_val_accuracy <= 1.0
