"""Model inputs of any shape: one tensor, or named tensors (``input_ids`` + ``attention_mask``).

Every stage feeds models through these helpers, so a model with several named inputs is called,
sliced, exported and run in ONNX Runtime like a one-tensor model. A data split is read in
batches (:class:`Split`): held in memory (:class:`TensorSplit`, the built-in sources) or streamed
from the user's ``Dataset``/``DataLoader`` on every pass (:class:`StreamSplit`), so memory is
bounded by the batch size, not by the dataset. Only the labels (one integer per sample) are kept.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

Inputs = torch.Tensor | dict[str, torch.Tensor]
SINGLE_INPUT = "input"  # the ONNX input name of a one-tensor model


def count(x: Inputs) -> int:
    """Number of samples in a batch."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def select(x: Inputs, index: slice | torch.Tensor | int) -> Inputs:
    """The samples ``index`` of every input."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


MASK = "attention_mask"


def trims_padding(model: Any) -> bool:
    """Whether ``model`` (or the model inside a ``DistributedDataParallel``) declares that right
    padding beyond a batch's longest sequence does not change its outputs (``variable_length``):
    a masked transformer does; a model with a fixed-length layer would not, so it is opt-in."""
    return bool(getattr(getattr(model, "module", model), "variable_length", False))


def trim_padding(x: Inputs) -> Inputs:
    """Named inputs cut after the last position any sample's ``attention_mask`` covers (what Hugging
    Face's ``DataCollatorWithPadding`` pads to): a batch of short reviews padded to 128 runs at its
    own length. Only right padding is cut (positions stay where they were); otherwise unchanged."""
    if not isinstance(x, dict) or MASK not in x or x[MASK].dim() != 2:
        return x
    used = x[MASK].bool().any(0)
    length = int(used.sum())
    if length == used.numel() or not bool(used[:length].all()):  # nothing to cut, or not right padding
        return x
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[1] == used.numel() else v for k, v in x.items()}


def fitted(model: Any, x: Inputs) -> Inputs:
    """``x`` as ``model`` should see it: cut to its longest sequence when the model declares it may be
    (:func:`trims_padding`), else unchanged. What training and evaluation feed a model."""
    return trim_padding(x) if trims_padding(model) else x


def concat(parts: Sequence[Inputs]) -> Inputs:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # type: ignore[index]
    return torch.cat(list(parts))  # type: ignore[arg-type]


def call(model: Any, x: Inputs) -> Any:
    """``model(**x)`` for named inputs, ``model(x)`` for one tensor."""
    return model(**x) if isinstance(x, dict) else model(x)


def first(x: Inputs | Split, n: int) -> Inputs:
    """The first ``n`` samples of a batch or a split."""
    return x.head(n) if isinstance(x, Split) else select(x, slice(0, n))


def describe(x: Inputs) -> str:
    """Shapes and dtypes for messages, e.g. ``input_ids (2, 64) int64, attention_mask (2, 64) int64``."""
    return ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in as_dict(x).items())


def names(x: Inputs) -> list[str]:
    return list(x) if isinstance(x, dict) else [SINGLE_INPUT]


def as_dict(x: Inputs) -> dict[str, torch.Tensor]:
    return dict(x) if isinstance(x, dict) else {SINGLE_INPUT: x}


def feeds(x: Inputs, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds: named inputs by name, a single tensor to the graph's only input."""
    if isinstance(x, dict):
        missing = [n for n in input_names if n not in x]
        if missing:
            from edgeslim.errors import UserError

            raise UserError(f"the model's inputs {missing} are not in the data (it has {list(x)})")
        return {n: _array(x[n]) for n in input_names}
    return {input_names[0]: _array(x)}


def _array(t: Any) -> np.ndarray:
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def primary(x: Inputs) -> torch.Tensor:
    """The first input (the image, or the token ids): what single-tensor tools look at."""
    return next(iter(x.values())) if isinstance(x, dict) else x


def save_samples(stem: Path, x: Inputs) -> Path:
    """Samples for a runtime outside this process (``edgeslim-bench --inputs``): one tensor as
    ``stem.npy``, fed to the model's only input whatever its name; named inputs as ``stem.npz``,
    one array per input name. Returns the file written."""
    if isinstance(x, dict):
        path = stem.with_suffix(".npz")
        with open(path, "wb") as f:
            np.savez(f, **{k: v.numpy() for k, v in x.items()})
    else:
        path = stem.with_suffix(".npy")
        np.save(path, x.numpy())
    return path


# ---- input spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputField:
    """One model input: name, dtype, axes (a name for each dynamic axis, an int for a fixed one)
    and the example size of every axis, taken from the data."""

    name: str
    dtype: str
    axes: list[str | int]
    example: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "axes": list(self.axes), "example": list(self.example)}


def _axes(t: torch.Tensor) -> list[str | int]:
    """``batch`` first; token ids and masks (integer, 2-D) have a dynamic ``sequence`` axis."""
    axes: list[str | int] = ["batch", *t.shape[1:]]
    if t.dim() == 2 and not t.dtype.is_floating_point:
        axes[1] = "sequence"
    return axes


def input_spec(x: Inputs) -> list[InputField]:
    """The input spec of a batch: what every artifact records and every runtime is fed."""
    return [
        InputField(name, str(t.dtype).removeprefix("torch."), _axes(t), [1, *t.shape[1:]])
        for name, t in as_dict(x).items()
    ]


def dynamic_axes(x: Inputs) -> dict[str, dict[int, str]]:
    """{input name: {axis: name}} for the dynamic axes of :func:`input_spec`."""
    return {f.name: {i: a for i, a in enumerate(f.axes) if isinstance(a, str)} for f in input_spec(x)}


# ---- splits ---------------------------------------------------------------------------------


class Split:
    """One data split, read in batches. ``labels`` (one integer per sample) are always at hand;
    the inputs only batch by batch."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """(inputs, labels) batches in ``order`` (a permutation of the sample indices) or as stored."""
        raise NotImplementedError

    def take(self, index: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        """The samples ``index`` (a few, for calibration), in that order."""
        raise NotImplementedError

    def steps(self, batch_size: int) -> int:
        """Batches in one pass at ``batch_size``."""
        return -(-len(self) // batch_size)

    def head(self, n: int) -> Inputs:
        return self.take(torch.arange(min(n, len(self))))[0]

    @property
    def spec(self) -> list[InputField]:
        return input_spec(self.head(1))


class TensorSplit(Split):
    """A split held in memory (the built-in sources, ``(x, y)`` pairs and ``TensorDataset``)."""

    def __init__(self, inputs: Inputs, labels: torch.Tensor):
        self.inputs = inputs
        self.labels = labels

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[tuple[Inputs, torch.Tensor]]:
        for i in range(0, len(self) if order is None else len(order), batch_size):
            if order is None:
                yield select(self.inputs, slice(i, i + batch_size)), self.labels[i : i + batch_size]
            else:
                idx = order[i : i + batch_size]
                yield select(self.inputs, idx), self.labels[idx]

    def take(self, index: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        return select(self.inputs, index), self.labels[index]

    @property
    def tensors(self) -> tuple[Inputs, torch.Tensor]:
        """(inputs, labels), as a ``TensorDataset`` holds them: for in-memory callers such as tests."""
        return self.inputs, self.labels


def as_split(data: Split | Dataset | tuple[Inputs, torch.Tensor]) -> Split:
    """A ``TensorDataset`` or an ``(inputs, labels)`` pair (or any split) as a :class:`Split`."""
    if isinstance(data, Split):
        return data
    if isinstance(data, TensorDataset):
        return TensorSplit(data.tensors[0], data.tensors[1])
    if isinstance(data, tuple) and len(data) == 2:
        return TensorSplit(data[0], torch.as_tensor(data[1]))
    raise TypeError(f"expected a Split or TensorDataset, not {type(data).__name__}")


def split_sample(item: Any) -> tuple[Any, Any]:
    """(inputs, label) of one sample or batch: ``(x, y)``, or a dict with a ``label``/``labels`` key."""
    if isinstance(item, dict):
        key = next((k for k in ("labels", "label") if k in item), None)
        if key is None:
            raise ValueError(f"a dict sample needs a 'label' or 'labels' key (it has {sorted(item)})")
        return {k: v for k, v in item.items() if k != key}, item[key]
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    raise ValueError(f"a sample must be (inputs, label) or a dict with a 'label' key, not a {type(item).__name__}")


def model_dtype(x: torch.Tensor) -> torch.Tensor:
    """Integer inputs (token ids, masks, category indices) stay int64 for embedding lookups; the rest is float32."""
    if not x.dtype.is_floating_point and x.dtype != torch.bool and not x.dtype.is_complex:
        return x.long()
    return x.float()


def _as_inputs(x: Any) -> Inputs:
    if isinstance(x, dict):
        return {str(k): model_dtype(torch.as_tensor(v)) for k, v in x.items()}
    return model_dtype(torch.as_tensor(x))


class StreamSplit(Split):
    """A user's ``Dataset``, ``IterableDataset`` or ``DataLoader``, read again on every pass.

    Map-style datasets are read in any order (training shuffles them); iterable ones and data
    loaders in their own order. ``labels`` come from one pass made when the data is loaded."""

    def __init__(self, source: Dataset | DataLoader, labels: torch.Tensor):
        self.source = source
        self.labels = labels
        fixed_mmap_threshold()

    @property
    def map_style(self) -> bool:
        return isinstance(self.source, Dataset) and not isinstance(self.source, IterableDataset)

    def steps(self, batch_size: int) -> int:
        if isinstance(self.source, DataLoader) and not self.map_style:  # the loader's own batches
            size = self.source.batch_size
            return -(-len(self) // size) if size else len(self.source)
        return super().steps(batch_size)

    def _loader(self, batch_size: int) -> Iterable[Any]:
        if isinstance(self.source, DataLoader):
            return self.source
        return DataLoader(self.source, batch_size=batch_size, shuffle=False)

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[tuple[Inputs, torch.Tensor]]:
        if order is not None and self.map_style:
            for i in range(0, len(order), batch_size):
                yield self.take(order[i : i + batch_size])
            return
        for batch in self._loader(batch_size):
            x, y = split_sample(batch)
            y = torch.as_tensor(y).reshape(-1)
            yield _as_inputs(x), y if y.dtype.is_floating_point else y.long()

    def take(self, index: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        if self.map_style:
            items = [split_sample(self.source[int(i)]) for i in index]  # type: ignore[index]
            return _stack([_as_inputs(x) for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
        wanted = {int(i): k for k, i in enumerate(index)}
        found: dict[int, tuple[Inputs, torch.Tensor]] = {}
        seen = 0
        for x, y in self.batches(256):
            n = count(x)
            for j in range(n):
                if seen + j in wanted:
                    found[seen + j] = (select(x, slice(j, j + 1)), y[j : j + 1])
            seen += n
            if len(found) == len(wanted):
                break
        parts = [found[int(i)] for i in index]
        return concat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class ShardSplit(Split):
    """Rank ``rank`` of ``world``'s part of a split, as ``DistributedSampler`` deals it.

    Splits read in any order (in memory, map-style datasets) deal every ``world``-th sample of the
    epoch's order; with ``pad`` the order is first padded (from its start) to a multiple of ``world``,
    so every rank runs the same number of steps, which data-parallel training needs. Streams read in
    their own order deal every ``world``-th batch, and with ``pad`` the batches past the last full
    round are dropped. ``len`` stays the whole split's: the epoch's order is a permutation of all of it.
    """

    def __init__(self, split: Split, rank: int, world: int, *, pad: bool = True):
        self.split, self.rank, self.world, self.pad = split, rank, world, pad
        self.labels = split.labels

    @property
    def indexed(self) -> bool:
        return not isinstance(self.split, StreamSplit) or self.split.map_style

    def mine(self, order: torch.Tensor | None) -> torch.Tensor:
        """This rank's sample indices of an epoch's ``order`` (all samples in stored order when None)."""
        order = torch.arange(len(self)) if order is None else order
        if self.pad and len(order) % self.world:
            order = torch.cat([order, order[: self.world - len(order) % self.world]])
        return order[self.rank :: self.world]

    def steps(self, batch_size: int) -> int:
        if self.indexed:
            return -(-len(self.mine(None)) // batch_size)
        whole = self.split.steps(batch_size)
        return whole // self.world if self.pad else -(-(whole - self.rank) // self.world)

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[tuple[Inputs, torch.Tensor]]:
        if self.indexed:
            yield from self.split.batches(batch_size, self.mine(order))
            return
        rounds = self.steps(batch_size)
        for i, batch in enumerate(self.split.batches(batch_size)):
            if i // self.world >= rounds:
                return
            if i % self.world == self.rank:
                yield batch

    def take(self, index: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        return self.split.take(index)


def _stack(samples: list[Inputs]) -> Inputs:
    if isinstance(samples[0], dict):
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}  # type: ignore[index]
    return torch.stack(samples)  # type: ignore[arg-type]


@functools.cache
def fixed_mmap_threshold(threshold: int = 1 << 20) -> bool:
    """Return freed batches to the OS: on glibc, allocations of ``threshold`` bytes and more always
    get their own memory map. glibc otherwise raises that threshold to the size of the largest block
    freed (a collated batch), after which batches come from the heap, interleaved with the samples
    they are stacked from, and the fragmented heap grows with every pass: measured 1.2 GB for 40,000
    streamed 3x48x48 images, against a flat 0.14 GB with the threshold fixed. Returns whether it was set."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False


def seen_tokens(split: Split, batch_size: int = 512) -> set[int]:
    """Every token id the split's texts use (padding excluded)."""
    seen: set[int] = set()
    for x, _ in split.batches(batch_size):
        ids = x["input_ids"]  # type: ignore[index]
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        seen.update((ids[mask.bool()] if mask is not None else ids.flatten()).unique().tolist())
    return seen
