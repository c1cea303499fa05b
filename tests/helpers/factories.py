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
