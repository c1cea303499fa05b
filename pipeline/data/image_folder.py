"""The built-in ``image_folder`` data source: one sub-folder of images per class, read with Pillow.

Class ids are the sub-folders' names, sorted. The split is made on the file list (``datasets``), so
only the images a run uses are read, each once: its bytes are hashed (the data fingerprint covers
the files, so editing one re-runs what depends on it) and decoded, converted to RGB or grayscale,
resized to ``image_size`` and center-cropped to ``crop`` (bilinear), then normalised
``(pixel / 255 - mean) / std``, the preprocessing the phone bundle records. Pillow comes with
matplotlib, a dependency already.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.config.schema import DataSpec, Preprocessing
from edgeslim.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The only decoders Pillow may use: a file named .png that is really another format is refused, not parsed.
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


@dataclass(frozen=True)
class ImageFolder:
    """The files of an image folder, listed but not read."""

    root: Path
    classes: list[str]  # sorted sub-folder names: index = class id
    files: list[Path]  # relative to root
    labels: np.ndarray  # int64 class id of each file


@dataclass(frozen=True)
class Images:
    """Decoded images of one split, ``(N, C, H, W)`` float32, and the sha256 of each file read."""

    pixels: np.ndarray
    sha256: list[str]


def scan(spec: DataSpec) -> ImageFolder:
    """List ``<path>/<class>/**/<image>`` (hidden files and other extensions are skipped)."""
    root = spec.path
    assert root is not None  # DataSpec requires it for image_folder
    if not root.is_dir():
        raise UserError(f"data.path: {'not a folder' if root.exists() else 'folder not found'}: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        found = f" ({', '.join(classes)})" if classes else ""
        raise UserError(
            f"data.path: {root} has {len(classes)} class folder(s){found}; image_folder needs one sub-folder "
            "of images per class, at least 2"
        )
    files: list[Path] = []
    labels: list[int] = []
    for class_id, name in enumerate(classes):
        found_files = _images_under(root / name)
        files += [f.relative_to(root) for f in found_files]
        labels += [class_id] * len(found_files)
    return ImageFolder(root, classes, files, np.asarray(labels, dtype=np.int64))


def _images_under(folder: Path) -> list[Path]:
    out: list[Path] = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        out += [Path(directory) / n for n in sorted(names) if not n.startswith(".") and n.lower().endswith(EXTENSIONS)]
    return out


def min_images_per_class(spec: DataSpec) -> int:
    """Enough images that the stratified split can give every class one in val and one in test."""
    return max(3, math.ceil(1 / min(spec.val_fraction, spec.test_fraction) - 1e-9))


def check_class_sizes(folder: ImageFolder, labels: np.ndarray, spec: DataSpec) -> None:
    """A one-line error naming the smallest class when the (subset of the) folder cannot be split."""
    needed = min_images_per_class(spec)
    counts = np.bincount(labels, minlength=len(folder.classes))
    smallest = int(np.argmin(counts))
    if counts[smallest] >= needed:
        return
    name = folder.classes[smallest]
    subset = f" of the max_samples={spec.max_samples} used" if len(labels) < len(folder.labels) else ""
    raise UserError(
        f"data.path: class '{name}' ({folder.root / name}) has {counts[smallest]} image(s){subset}; splitting into "
        f"train/val/test (val_fraction {spec.val_fraction}, test_fraction {spec.test_fraction}) needs at least "
        f"{needed} per class"
    )


def read_images(folder: ImageFolder, indices: np.ndarray, spec: DataSpec) -> Images:
    """Read and decode the files at ``indices`` once each, into one normalised array."""
    from PIL import Image

    out: np.ndarray | None = None
    first = ""
    digests: list[str] = []
    for i, index in enumerate(indices):
        path = folder.root / folder.files[int(index)]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"data.path: cannot read {path}: {exc.strerror or exc}") from None
        digests.append(hashlib.sha256(data).hexdigest())
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                array = _pixels(image, path, spec)
        except UserError:
            raise
        except Exception as exc:  # truncated, corrupt, a decompression bomb, another format under an image name
            detail = " ".join(str(exc).split())[:200]
            raise UserError(f"data.path: cannot read image {path}: {type(exc).__name__}: {detail}") from None
        if out is None:
            out, first = np.empty((len(indices), *array.shape), dtype=np.uint8), str(path)
        elif array.shape != out.shape[1:]:
            raise UserError(
                f"data.image_size: images differ in size ({first} is {_size(out.shape[1:])}, {path} is "
                f"{_size(array.shape)}); set data.image_size to resize them to one size"
            )
        out[i] = array
    assert out is not None  # every split holds images of every class (check_class_sizes)
    return Images(_normalise(out, spec), digests)


def _pixels(image: object, path: Path, spec: DataSpec) -> np.ndarray:
    """One decoded image -> ``(H, W, C)`` uint8: upright, RGB or grayscale, resized, center-cropped."""
    from PIL import Image, ImageOps

    assert isinstance(image, Image.Image)
    if image.mode not in EIGHT_BIT_MODES:  # 16-bit or float pixels: converting would clip them silently
        raise UserError(f"data.path: {path} has {image.mode} pixels; image_folder reads 8-bit images")
    image = ImageOps.exif_transpose(image)  # as a viewer (and a phone's camera pipeline) shows it
    image = image.convert("L" if spec.grayscale else "RGB")
    if spec.image_size is not None and image.size != (spec.image_size, spec.image_size):
        image = image.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR)
    if spec.crop is not None:
        width, height = image.size
        if width < spec.crop or height < spec.crop:
            raise UserError(
                f"data.crop: {path} is {width}x{height}, smaller than crop {spec.crop}; set data.image_size to "
                "resize first"
            )
        left, top = round((width - spec.crop) / 2), round((height - spec.crop) / 2)
        image = image.crop((left, top, left + spec.crop, top + spec.crop))
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"  # width x height, as image tools say it


def channels(spec: DataSpec) -> int:
    return 1 if spec.grayscale else 3


def _per_channel(values: list[float] | None, default: float, spec: DataSpec) -> list[float]:
    values = values or [default]
    return values * channels(spec) if len(values) == 1 else list(values)


def preprocessing(spec: DataSpec, height: int, width: int) -> Preprocessing:
    """What app code does to a photo before the model sees it (recorded in the phone bundle)."""
    steps = [f"{'grayscale' if spec.grayscale else 'RGB'} image, 0-255"]
    if spec.image_size is not None:
        steps.append(f"resized to {spec.image_size}x{spec.image_size} (bilinear)")
    if spec.crop is not None:
        steps.append(f"center-cropped to {spec.crop}x{spec.crop}")
    if len(steps) == 1:
        steps[0] = f"{'grayscale' if spec.grayscale else 'RGB'} {width}x{height}, 0-255"
    return Preprocessing(
        layout="NCHW",
        scale=1 / 255,
        mean=_per_channel(spec.mean, 0.0, spec),
        std=_per_channel(spec.std, 1.0, spec),
        raw_input=", ".join(steps),
    )


def _normalise(pixels: np.ndarray, spec: DataSpec) -> np.ndarray:
    """``(N, H, W, C)`` uint8 -> ``(N, C, H, W)`` float32 ``(raw * scale - mean) / std``, as recorded."""
    pre = preprocessing(spec, pixels.shape[1], pixels.shape[2])
    mean = np.asarray(pre.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[None, :, None, None]
    scaled = pixels.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(pre.scale)
    return np.ascontiguousarray((scaled - mean) / std)
