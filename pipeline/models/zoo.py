"""Built-in models and resolution of user model factories.

A model spec names either a built-in or a user factory ``package.module:function``. Built-ins
receive the dataset's channel and class counts (plus the config's ``kwargs``); user factories
receive only the ``kwargs`` from the config.

Built-ins: ``edge_cnn``, ``tiny_cnn`` and ``text_cnn`` (token ids; defined here), and the standard edge architectures of
:mod:`edgeslim.models.architectures`, written from their papers: ``resnet18``,
``mobilenet_v3_small`` and ``efficientnet_b0`` (kwargs ``width_mult``, ``small_input``,
``dropout``, ``zero_init_residual``; EfficientNet also ``depth_mult``) and ``vit_tiny``
(``image_size``, ``patch_size``, ``dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``pool``,
``dropout``). ``small_input`` (default true) is the stem for 8–64 px images; on the 28 px and
8 px built-in datasets give them ``data.image_size`` (32 in ``configs/zoo/``).
"""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from edgeslim.errors import UserError
from edgeslim.models.architectures import EfficientNetB0, MobileNetV3Small, ResNet18, ViTTiny


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class EdgeCNN(nn.Module):
    """A VGG-style CNN sized for edge work: about 1.6 ms FP32 at batch 1 on one x86 core.

    Global average pooling makes it independent of the input resolution, so the same
    architecture serves 8x8 digits and 28x28 MNIST.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 80, dropout: float = 0.1):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_block(in_channels, w),
            _conv_block(w, w),
            nn.MaxPool2d(2),
            _conv_block(w, 2 * w),
            _conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w),
            _conv_block(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


class TinyCNN(nn.Module):
    """A very small CNN for tests: trains on a digits slice in a second."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_conv_block(in_channels, width), _conv_block(width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class TextCNN(nn.Module):
    """A text classifier for token ids (Kim, 2014, with two stacked convs): embedding, 1-D convs over
    the sequence, max over time, linear head. ``in_channels`` is the vocabulary size (one input
    channel per token id). Padding is masked out (``attention_mask``, else ``input_ids != pad_id``),
    so pad length never changes the answer; every layer is one ONNX Runtime has integer kernels for
    (Gather, Conv, Gemm)."""

    def __init__(
        self,
        in_channels: int = 30522,
        num_classes: int = 2,
        dim: int = 64,
        width: int = 128,
        kernel_size: int = 3,
        pad_id: int = 0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(in_channels, dim)
        pad = kernel_size // 2
        self.conv1 = nn.Sequential(nn.Conv1d(dim, width, kernel_size, padding=pad), nn.BatchNorm1d(width), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv1d(width, width, kernel_size, padding=pad), nn.BatchNorm1d(width), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        mask = attention_mask.unsqueeze(1).to(self.embed.weight.dtype)  # (N, 1, L)
        h = self.embed(input_ids).transpose(1, 2) * mask
        h = self.conv2(self.conv1(h)) * mask  # after ReLU: >= 0, so masked positions never win the max
        return self.classifier(self.dropout(h.amax(dim=2)))


BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "edge_cnn": EdgeCNN,
    "tiny_cnn": TinyCNN,
    "text_cnn": TextCNN,
    "resnet18": ResNet18,
    "mobilenet_v3_small": MobileNetV3Small,
    "efficientnet_b0": EfficientNetB0,
    "vit_tiny": ViTTiny,
}


# Folders ``factory_search_path`` put first on ``sys.path``: named when a factory's module is still not found.
_SEARCH_FOLDERS: list[Path] = []


@contextmanager
def factory_search_path(folders: Iterable[Path]) -> Iterator[list[Path]]:
    """Put ``folders`` first on ``sys.path``, in order, while a run imports ``package.module:factory``.

    The ``edgeslim`` script, unlike ``python -m``, has neither the config's folder nor the current one
    on the import path, so a ``tabnet.py`` beside the config would need ``PYTHONPATH=.``. Restored on exit."""
    added = list(dict.fromkeys(Path(folder).resolve() for folder in folders))
    entries = [str(folder) for folder in added]
    previous = list(_SEARCH_FOLDERS)
    sys.path[0:0] = entries
    _SEARCH_FOLDERS[:] = added
    importlib.invalidate_caches()
    try:
        yield added
    finally:
        for entry in entries:
            if entry in sys.path:
                sys.path.remove(entry)
        _SEARCH_FOLDERS[:] = previous


def _not_found(module_name: str, missing: str) -> str:
    where = (
        f"in {', '.join(str(folder) for folder in _SEARCH_FOLDERS)} or the installed packages"
        if _SEARCH_FOLDERS
        else "on the Python import path (run from its folder, or install it)"
    )
    return f"cannot import module '{module_name}': no module named '{missing}' {where}"


# Objects handed to ``edgeslim.run(model=..., data=...)``, named in the config as ``python:<what>@<digest>``:
# the digest covers what the object is (class source, weights), so a changed object re-runs its stages.
PYTHON_PREFIX = "python:"
_PYTHON_OBJECTS: dict[str, object] = {}


def register_python_object(label: str, digest: str, obj: object) -> str:
    """Make ``obj`` resolvable by :func:`import_object` under a content-derived name; returns the name."""
    name = f"{PYTHON_PREFIX}{label}@{digest[:16]}"
    _PYTHON_OBJECTS[name] = obj
    return name


def import_object(ref: str, what: str) -> object:
    """Import ``package.module:attr`` (or look up a ``python:`` object given to ``edgeslim.run``); raise a
    one-line UserError naming ``what`` on failure."""
    if ref.startswith(PYTHON_PREFIX):
        if ref not in _PYTHON_OBJECTS:
            raise UserError(
                f"{what}: '{ref}' names a Python object given to edgeslim.run in another process; "
                "pass the object to edgeslim.run again"
            )
        return _PYTHON_OBJECTS[ref]
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{what}: '{ref}' is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # the module itself (or its package) is missing, not something it imports: say where it was looked for
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise UserError(f"{what}: {_not_found(module_name, exc.name)}") from None
        raise UserError(f"{what}: cannot import module '{module_name}': {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # any import-time failure is the user's module's problem
        raise UserError(f"{what}: cannot import module '{module_name}': {type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"{what}: module '{module_name}' has no attribute '{attr}'") from None


def build_model(name: str, kwargs: dict, in_channels: int, num_classes: int, what: str = "model.name") -> nn.Module:
    """Instantiate the architecture named by a model spec (random init)."""
    if name in BUILTIN_MODELS:
        factory: Callable[..., nn.Module] = BUILTIN_MODELS[name]
        kwargs = {"in_channels": in_channels, "num_classes": num_classes, **kwargs}
    else:
        obj = import_object(name, what)
        if not callable(obj):
            raise UserError(f"{what}: '{name}' is not callable")
        factory = obj  # type: ignore[assignment]
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise UserError(f"{what}: factory '{name}' raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{what}: factory '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict_file(path: Path, what: str = "model.checkpoint") -> dict[str, torch.Tensor]:
    """Load weights safely: safetensors, or torch files with ``weights_only=True`` (never a pickled model)."""
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{what}: refused {path}: it holds pickled Python objects, not only tensors "
            "(use safetensors or a weights-only state_dict)"
        ) from None
    except Exception as exc:
        raise UserError(f"{what}: cannot load weights from {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: {path} does not hold a state_dict of tensors")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with a readable error for mismatched checkpoints."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise UserError(f"{what}: checkpoint does not match the architecture: {detail[:300]}") from None
