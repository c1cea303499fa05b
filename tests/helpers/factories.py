"""User-style factories for tests: a model and datasets brought by "the user"."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset


def small_mlp(hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def broken_model() -> nn.Module:
    raise RuntimeError("weights server unreachable")


def not_a_model() -> str:
    return "model"


def digits_splits(n: int = 300):
    bunch = load_digits()
    x = torch.tensor(bunch.data[:n], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(bunch.target[:n])
    a, b = int(n * 0.7), int(n * 0.85)
    return TensorDataset(x[:a], y[:a]), TensorDataset(x[a:b], y[a:b]), TensorDataset(x[b:], y[b:])


def empty_test_split():
    train, val, _ = digits_splits()
    return train, val, TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))


def float_labels():
    train, val, test = digits_splits()
    return TensorDataset(train.tensors[0], train.tensors[1].float()), val, test


def mismatched_shapes():
    train, val, test = digits_splits()
    return train, val, TensorDataset(test.tensors[0][:, :, :4, :4], test.tensors[1])


def digits_parity(n: int = 600):
    """A different task on the same real images: is the digit even or odd?"""
    splits = digits_splits(n)
    return tuple(TensorDataset(s.tensors[0], s.tensors[1] % 2) for s in splits)


# Broken inputs for tests/bad_inputs: each one a mistake a user could really make.


def nan_inputs():
    train, val, test = digits_splits()
    x = train.tensors[0].clone()
    x[3, 0, 2, 2] = float("nan")  # one corrupt pixel, as a bad normalisation produces
    return TensorDataset(x, train.tensors[1]), val, test


def negative_labels():
    train, val, test = digits_splits()
    return TensorDataset(train.tensors[0], train.tensors[1] - 1), val, test


def single_class():
    train, val, test = digits_splits()
    return tuple(TensorDataset(s.tensors[0], torch.zeros_like(s.tensors[1])) for s in (train, val, test))


def length_mismatch():
    train, val, test = digits_splits()
    return (train.tensors[0], train.tensors[1][:-5]), val, test


def flat_vectors():
    """Inputs without a feature axis (a 1-D tensor per split)."""
    train, val, test = digits_splits()
    return tuple((s.tensors[0].reshape(-1)[: len(s.tensors[1])], s.tensors[1]) for s in (train, val, test))


def two_splits():
    train, val, _ = digits_splits()
    return train, val


def unreachable_data():
    raise ConnectionError("dataset server unreachable")


def three_class_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def absurd_model() -> nn.Module:
    """A model whose layer sizes need terabytes: must fail with a message, not a crash."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10**12))


def conv_only() -> nn.Module:
    """Convolutions only (a 1x1 convolution as the classifier): nothing for INT4 MatMul quantization."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def digits_from_file(path: str):
    """Digits saved by the user as ``.npz`` (x, y): the data's bytes change while the config does not."""
    import numpy as np

    arrays = np.load(path, allow_pickle=False)
    x, y = torch.from_numpy(arrays["x"]).float(), torch.from_numpy(arrays["y"]).long()
    a, b = int(len(x) * 0.7), int(len(x) * 0.85)
    return TensorDataset(x[:a], y[:a]), TensorDataset(x[a:b], y[a:b]), TensorDataset(x[b:], y[b:])


def lopsided_cnn(num_classes: int = 10) -> nn.Module:
    """Where the time and the weights are in different layers: two convolutions at full resolution
    (few weights, most of the time) and two wide ones on a 4x4 map (most weights, little time)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Conv2d(32, 128, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )
