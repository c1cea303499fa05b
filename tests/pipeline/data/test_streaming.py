"""Streamed data: a factory's ``Dataset``/``IterableDataset``/``DataLoader`` is read batch by batch on
every pass, never held whole, with named inputs, fixed splits and a fingerprint from one pass."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, IterableDataset

import edgeslim
from edgeslim.api import parse_config
from edgeslim.data.batches import StreamSplit, TensorSplit
from edgeslim.data.datasets import load_data
from edgeslim.errors import UserError
from edgeslim.models.loader import select_output
from edgeslim.train.loop import evaluate

ROOT = Path(__file__).resolve().parents[3]


class LazyImages(Dataset):
    """``n`` seeded 3x48x48 images, each made when it is asked for (never all in memory)."""

    def __init__(self, n: int, offset: int = 0):
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.offset + i)
        label = (self.offset + i) % 2
        return torch.randn(3, 48, 48, generator=g) + label, label


def lazy_images(n: int = 40_000):
    return LazyImages(n), LazyImages(2_000, 10**6), LazyImages(n, 2 * 10**6)


class _Digits(Dataset):
    """Real digits as named inputs, one dict per sample (``label`` key): map-style."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {"pixels": self.x[i], "scale": torch.tensor([1.0]), "label": int(self.y[i])}


class _DigitsStream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __iter__(self):
        for i in range(len(self.y)):
            yield {"pixels": self.x[i], "scale": torch.tensor([1.0]), "label": int(self.y[i])}


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    bunch = load_digits()
    return torch.tensor(bunch.data, dtype=torch.float32) / 16.0, torch.tensor(bunch.target)


def streamed_digits():
    """Train map-style (shuffled each epoch), val iterable, test a DataLoader of the user's batch size."""
    x, y = _digits()
    return (
        _Digits(x[:1200], y[:1200]),
        _DigitsStream(x[1200:1500], y[1200:1500]),
        DataLoader(_Digits(x[1500:], y[1500:]), batch_size=50),
    )


class TwoInputNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))

    def forward(self, pixels: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.body[:2](pixels * scale)
        return {"hidden": hidden, "logits": self.body[2](hidden)}  # the scores: "logits", by default


def two_input_net() -> torch.nn.Module:
    return TwoInputNet()


def _spec(name: str) -> object:
    cfg = {"name": "s", "model": {"name": "tiny_cnn"}, "data": {"name": name}, "stages": ["baseline"]}
    return parse_config(cfg).data


def test_streamed_splits_are_read_batch_by_batch_with_named_inputs() -> None:
    data = load_data(_spec(f"{__name__}:streamed_digits"))
    assert all(isinstance(s, StreamSplit) for s in (data.train, data.val, data.test))
    assert (len(data.train), len(data.val), len(data.test)) == (1200, 300, 297)
    assert [(f.name, f.dtype, f.axes) for f in data.input_spec] == [
        ("pixels", "float32", ["batch", 64]),
        ("scale", "float32", ["batch", 1]),
    ]
    first_batch = next(data.test.batches(512))[0]["pixels"]
    assert len(first_batch) == 50  # a DataLoader keeps its own batches
    picked, labels = data.val.take(torch.tensor([5, 0, 299]))  # an iterable split: found in one pass
    x, y = _digits()
    assert torch.equal(picked["pixels"], x[[1205, 1200, 1499]]) and labels.tolist() == y[[1205, 1200, 1499]].tolist()
    assert data.fingerprint == load_data(_spec(f"{__name__}:streamed_digits")).fingerprint
    assert data.num_classes == 10 and torch.equal(data.test.labels, y[1500:])


def test_a_streamed_two_input_model_runs_the_pipeline(tmp_path: Path) -> None:
    cfg = {
        "name": "stream",
        "seed": 0,
        "model": {"name": f"{__name__}:two_input_net"},
        "data": {"name": f"{__name__}:streamed_digits"},
        "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
        "stages": [
            {"train": {"epochs": 4, "batch_size": 64, "optimizer": {"lr": 0.01}}},
            "baseline",
            {"prune": {"pruning_ratio": 0.25}},
            "export",
            # entropy calibration stacks batches: 100 samples must not leave a short last batch
            {"quantize": {"method": "static", "calibration": "entropy", "calibration_samples": 100}},
        ],
    }
    result = edgeslim.run(cfg, out=tmp_path)
    assert [s.status for s in result.stages] == ["ran"] * 5
    assert result.stage("baseline").metrics.accuracy > 0.8  # learned from the stream, scored on the loader
    manifest = json.loads((result.stage_dir("export") / "manifest.json").read_text())
    assert [i["name"] for i in manifest["input_spec"]] == ["pixels", "scale"]
    import onnx

    graph = onnx.load(str(result.model_file("export"))).graph
    assert [i.name for i in graph.input] == ["pixels", "scale"] and len(graph.output) == 1  # the logits only
    assert result.stage("quantize").details["calibration_samples"] == 100


def test_in_memory_sources_stay_tensors() -> None:
    data = load_data(_spec("digits"))
    assert isinstance(data.train, TensorSplit) and data.input_spec[0].name == "input"


def test_a_broken_stream_is_one_line() -> None:
    with pytest.raises(UserError, match=r"^data\.name: cannot read the train split: ValueError: a dict sample needs"):
        load_data(_spec(f"{__name__}:no_label_key"))


def no_label_key():
    x, y = _digits()

    class NoLabel(_Digits):
        def __getitem__(self, i: int):
            return {"pixels": self.x[i]}

    return NoLabel(x[:100], y[:100]), NoLabel(x[:100], y[:100]), NoLabel(x[:100], y[:100])


def _peak_growth_mb(n: int) -> tuple[float, int]:
    """Peak RSS growth (MB) of loading, fingerprinting and evaluating ``lazy_images(n)``, in a fresh process."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from edgeslim.api import parse_config
        from edgeslim.data.datasets import load_data
        from edgeslim.train.loop import evaluate
        import {__name__}
        torch.set_num_threads(1)
        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
        evaluate(net, torch.utils.data.TensorDataset(torch.zeros(64, 3, 48, 48), torch.zeros(64, dtype=torch.long)))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cfg = {{"name": "m", "model": {{"name": "tiny_cnn"}},
               "data": {{"name": "{__name__}:lazy_images", "kwargs": {{"n": {n}}}}}, "stages": ["baseline"]}}
        data = load_data(parse_config(cfg).data)
        evaluate(net, data.test, batch_size=256)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({{"growth": after - before, "n": len(data.test)}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    return facts["growth"], facts["n"]


def test_memory_stays_flat_on_a_dataset_too_big_to_hold() -> None:
    """Ten times more lazily made 3x48x48 images (40,000 per split: 1.1 GB each as float32) are loaded,
    fingerprinted and evaluated in the same peak memory as 4,000: it is bounded by the batch, not the data."""
    small, n_small = _peak_growth_mb(4_000)
    large, n_large = _peak_growth_mb(40_000)
    split_mb = n_large * 3 * 48 * 48 * 4 / 2**20
    assert (n_small, n_large) == (4_000, 40_000) and split_mb > 1000
    assert large - small < split_mb / 20, (small, large)  # flat (was +1.2 GB before glibc's threshold was fixed)


def test_evaluate_reads_a_stream_once_per_pass() -> None:
    data = load_data(_spec(f"{__name__}:streamed_digits"))
    net = select_output(two_input_net().eval(), None, data.example_batch(2))  # as the run loads it
    accuracy, loss = evaluate(net, data.test)
    assert 0 <= accuracy <= 1 and np.isfinite(loss)
