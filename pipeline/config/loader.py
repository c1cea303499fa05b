"""Reading a run config: YAML (``yaml.safe_load`` only) or a dict, validated into ``RunConfig``.

The stage types are passed in (``edgeslim.api`` passes ``edgeslim.stages.STAGES``), so the
config layer never imports the stages and the stages can import the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgeslim.config.schema import (
    BUILTIN_HF,
    BUILTIN_TOKENIZER,
    TEXT_SOURCES,
    GuardConfig,
    RemoteProfile,
    RunConfig,
    StageEntry,
    format_validation_error,
)
from edgeslim.errors import UserError, first_line


def _parse_stages(raw: Any, registry: Mapping[str, Any]) -> list[StageEntry]:
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
        settings = {} if settings is None else settings
        if not isinstance(settings, dict):
            raise UserError(f"stages[{i}].{kind}: settings must be a mapping (got {settings!r})")
        settings = dict(settings)
        stage_cls = registry[kind]
        if "guard" in settings:
            guard = settings.pop("guard") or None  # ``guard: null`` / ``false`` turns a default guard off
        else:  # a stage may bring its own guard (quantize: 1 point); the first stage has nothing to compare with
            guard = getattr(stage_cls, "default_guard", None) if i > 0 else None
        config_cls = registry[kind].Config
        try:
            validated = config_cls.model_validate(settings)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, config_cls, (f"stages[{i}]", kind))) from None
        try:
            guard_config = None if guard is None else GuardConfig.model_validate(guard)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, GuardConfig, (f"stages[{i}]", kind, "guard"))) from None
        entries.append(StageEntry(type=kind, settings=validated, guard=guard_config, stage_class=registry[kind]))
    return entries


def _refuse_nul_bytes(value: Any, where: str) -> None:
    """A NUL byte cannot be in a path or a name; refuse it here with its key rather than deep in os calls."""
    if isinstance(value, str) and "\0" in value:
        raise UserError(f"{where or 'config'}: contains a NUL byte")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\0" in key:
                raise UserError(f"{where or 'config'}: key {key!r} contains a NUL byte")
            _refuse_nul_bytes(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_nul_bytes(item, f"{where}[{i}]")


def parse_config(raw: Any, stage_types: Mapping[str, Any], base_dir: Path | None = None) -> RunConfig:
    """Validate a parsed YAML document against ``stage_types`` (name -> Stage class).

    Relative paths are taken from ``base_dir`` (the config's folder)."""
    if not isinstance(raw, dict):
        raise UserError("config: the top level must be a mapping of keys (name, model, data, stages, ...)")
    original = raw
    raw = dict(raw)
    raw.pop("search", None)  # edgeslim search's block (validated there): a run runs the stages as written
    stages = _parse_stages(raw.pop("stages", None), stage_types)
    try:
        config = RunConfig.model_validate({**raw, "stages": stages})
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, RunConfig)) from None
    config._stage_types = dict(stage_types)
    _refuse_nul_bytes(original, "")  # after validation, so unknown keys are named first; before any path is used
    ckpt = config.model.checkpoint
    if ckpt is not None and not ckpt.is_absolute() and base_dir is not None:
        config.model.checkpoint = (base_dir / ckpt).resolve()
    onnx_file = config.model.onnx_file
    if onnx_file is not None and not onnx_file.is_absolute() and base_dir is not None:
        config.model.name = str((base_dir / onnx_file).resolve())
    folder = config.data.path
    if folder is not None and not folder.is_absolute() and base_dir is not None:
        config.data.path = (base_dir / folder).resolve()
    hf = config.model.hf
    if hf not in (None, BUILTIN_HF) and not Path(hf).is_absolute() and base_dir is not None:
        config.model.hf = str((base_dir / hf).resolve())
    if config.model.hf is not None and config.data.name in TEXT_SOURCES and config.data.tokenizer is None:
        config.data.tokenizer = config.model.hf  # the model's own tokenizer travels with it
    tokenizer = config.data.tokenizer
    if tokenizer not in (None, BUILTIN_TOKENIZER) and not Path(tokenizer).is_absolute() and base_dir is not None:
        config.data.tokenizer = str((base_dir / tokenizer).resolve())
    for device in config.devices:
        if isinstance(device, RemoteProfile) and not device.report.is_absolute() and base_dir is not None:
            device.report = (base_dir / device.report).resolve()
    return config


def read_yaml(path: Path) -> Any:
    """A YAML file parsed with ``yaml.safe_load``; a missing, unreadable or malformed file is one line."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot read config: {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: malformed YAML: nested too deeply") from None
    except Exception as exc:  # PyYAML's own failures on odd input (e.g. a bare '!!float', a 5000-digit int)
        first = first_line(exc)
        raise UserError(f"{path}: malformed YAML: {type(exc).__name__}: {first}") from None


def load_config(path: Path, stage_types: Mapping[str, Any]) -> RunConfig:
    """Read, parse (``yaml.safe_load``) and validate a config file."""
    return parse_config(read_yaml(path), stage_types, base_dir=path.parent)
