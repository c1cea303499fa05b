"""Run configuration: YAML validated by pydantic, with one-line errors that name the key path.

Stage settings are validated by each stage's own ``Config`` model (looked up in the stage
registry), so adding a stage never touches this file.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import UserError


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(StrictModel):
    name: str = Field("edge_cnn", description="built-in model name or package.module:factory")
    checkpoint: Path | None = Field(None, description="weights (.safetensors, or .pt/.pth state_dict)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")


class DataSpec(StrictModel):
    name: str = Field("mnist5k", description="mnist5k | digits | package.module:factory")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a factory")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    split_seed: int = Field(0, ge=0, description="seed of the fixed train/val/test split")
    max_samples: int | None = Field(None, ge=30, description="use a stratified subset (tests, quick trials)")


GraphOptimization = Literal["disable", "basic", "extended", "all"]


class DeviceProfile(StrictModel):
    """Where latency is measured. ``host`` is this CPU through ONNX Runtime."""

    name: Literal["host"] = "host"
    threads: list[int] = Field(default_factory=lambda: [1], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    graph_optimization: GraphOptimization = "all"

    @field_validator("threads", "batch_sizes")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("every entry must be >= 1")
        return values


class MeasureSpec(StrictModel):
    """How each stage's latency is measured (first thread count and batch size of the device)."""

    warmup: int = Field(20, ge=0)
    runs: int = Field(200, ge=5)
    max_seconds: float = Field(5.0, gt=0, description="stop early when this time budget is spent")
    eval_batch_size: int = Field(256, ge=1)


class StageEntry(StrictModel):
    """One validated stage: its type name and its own config object."""

    type: str
    settings: BaseModel


class RunConfig(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run folder name")
    seed: int = Field(0, ge=0)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    device: DeviceProfile = Field(default_factory=DeviceProfile)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    stages: list[StageEntry] = Field(..., min_length=1)

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
        data["stages"] = [{e.type: e.settings.model_dump(mode="json")} for e in self.stages]
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


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        models = [t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        current = models[0] if models else None
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


# ---------------------------------------------------------------- loading


def _parse_stages(raw: Any) -> list[StageEntry]:
    from pipeline.stage import stage_registry  # late: the registry imports the stages package

    registry = stage_registry()
    allowed = ", ".join(registry)
    if not isinstance(raw, list) or not raw:
        raise UserError(f"stages: must be a non-empty list of {{stage: settings}} entries; stages are: {allowed}")
    entries = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise UserError(f"stages[{i}]: must be one mapping like '- prune: {{pruning_ratio: 0.5}}'")
        ((kind, settings),) = item.items()
        if kind not in registry:
            raise UserError(f"stages[{i}]: unknown stage '{kind}'; allowed: {allowed}")
        settings = settings or {}
        if not isinstance(settings, dict):
            raise UserError(f"stages[{i}].{kind}: settings must be a mapping (got {settings!r})")
        config_cls = registry[kind].Config
        try:
            validated = config_cls.model_validate(settings)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, config_cls, (f"stages[{i}]", kind))) from None
        entries.append(StageEntry(type=kind, settings=validated))
    return entries


def parse_config(raw: Any, base_dir: Path | None = None) -> RunConfig:
    """Validate a parsed YAML document. Relative paths are taken from the config's folder."""
    if not isinstance(raw, dict):
        raise UserError("config: the top level must be a mapping of keys (name, model, data, stages, ...)")
    raw = dict(raw)
    stages = _parse_stages(raw.pop("stages", None))
    try:
        config = RunConfig.model_validate({**raw, "stages": stages})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, RunConfig)) from None
    ckpt = config.model.checkpoint
    if ckpt is not None and not ckpt.is_absolute() and base_dir is not None:
        config.model.checkpoint = (base_dir / ckpt).resolve()
    return config


def load_config(path: Path) -> RunConfig:
    """Read, parse (``yaml.safe_load``) and validate a config file."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot read config: {exc}") from None
    return parse_config(raw, base_dir=path.parent)
