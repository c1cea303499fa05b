"""Olive user script: the calibration images edgeslim's peers share, as an Olive dataset.

Runs inside Olive's own venv (artifacts/peers/olive-venv), not the project's: it imports only
numpy, torch (which Olive itself needs) and Olive. ``bench/peers.py`` writes the images to a
``.npy`` file (N, C, H, W float32, already normalised) and points the data config at it::

    "load_dataset_config": {"type": "edgeslim_calibration", "npy_path": "...", "input_name": "input"}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from olive.data.registry import Registry


class NpyCalibration(torch.utils.data.Dataset):
    """One image per item, as Olive's calibration reader expects: ({input_name: tensor}, dummy label)."""

    def __init__(self, npy_path: str, input_name: str) -> None:
        self.images = torch.from_numpy(np.load(npy_path, allow_pickle=False).astype(np.float32))
        self.input_name = input_name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        return {self.input_name: self.images[index]}, 0


@Registry.register_dataset()
def edgeslim_calibration(npy_path: str, input_name: str = "input", **kwargs: Any) -> NpyCalibration:
    return NpyCalibration(npy_path, input_name)
