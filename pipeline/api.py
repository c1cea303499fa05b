"""The Python API: what ``import edgeslim`` offers beside the ``edgeslim`` command.

    import edgeslim

    result = edgeslim.run("configs/digits_quick.yaml", out="artifacts")
    print(result.final.metrics.accuracy, result.deliverable)

``run`` takes a config file, a dict in the YAML's shape or a ``RunConfig``; user mistakes raise
``edgeslim.UserError`` with the same one-line message the CLI prints. This module is also where
the stage types are wired into the config loader and the runner (the engine never imports them).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeslim.config import loader
from edgeslim.config.schema import RunConfig
from edgeslim.engine import distributed
from edgeslim.engine.records import REPORT_JSON, RunReport, StageRecord, read_report
from edgeslim.engine.runner import Runner
from edgeslim.engine.stage import Stage
from edgeslim.errors import UserError

_EXTRA_STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Make a user-defined stage usable in configs under ``cls.name`` (also works as a decorator)."""
    from edgeslim.stages import STAGES

    if cls.name in STAGES:
        raise UserError(f"a built-in stage is already named '{cls.name}'")
    _EXTRA_STAGES[cls.name] = cls
    return cls


def stage_types() -> dict[str, type[Stage]]:
    """Every stage a config may name: the built-in ones and those added with ``register_stage``."""
    from edgeslim.stages import STAGES

    return {**STAGES, **_EXTRA_STAGES}


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config (relative paths in it are taken from its folder)."""
    return loader.load_config(Path(path), stage_types())


def parse_config(raw: Mapping[str, Any], base_dir: str | Path | None = None) -> RunConfig:
    """Validate a dict in the YAML's shape (relative paths are taken from ``base_dir``)."""
    return loader.parse_config(dict(raw), stage_types(), base_dir=Path(base_dir) if base_dir else None)


def as_config(config: str | Path | Mapping[str, Any] | RunConfig) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, Path.cwd())
    if isinstance(config, str | Path):
        return load_config(config)
    raise UserError(f"config: expected a path, a dict or a RunConfig (got {type(config).__name__})")


@dataclass(frozen=True)
class RunResult:
    """What ``run`` returns: the run's report (one ``StageRecord`` per stage) and where things are."""

    run_dir: Path
    report: RunReport

    @property
    def stages(self) -> list[StageRecord]:
        return self.report.stages

    @property
    def final(self) -> StageRecord:
        """The last stage's record."""
        return self.report.stages[-1]

    def stage(self, name: str) -> StageRecord:
        """A stage's record by type name (first match) or folder label, e.g. ``"prune"`` or ``"02-prune"``."""
        try:
            return self.report.stage(name)
        except KeyError:
            labels = ", ".join(s.label for s in self.report.stages)
            raise UserError(f"no stage '{name}' in run {self.report.run}; stages are: {labels}") from None

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / self.stage(name).dir

    def model_file(self, name: str) -> Path:
        """The deployable ONNX file of a stage (what its metrics describe)."""
        record = self.stage(name)
        if record.metrics is None:
            raise UserError(f"stage {record.label} has no measured model")
        return self.run_dir / record.dir / record.metrics.deployable

    @property
    def deliverable(self) -> Path:
        """The model to ship: the run guard's choice when it kept an earlier stage, else the final stage's."""
        label = self.report.guard.deliverable if self.report.guard else self.final.dir
        return self.model_file(label)

    @property
    def report_md(self) -> Path:
        from edgeslim.reports.run_report import REPORT_MD

        return self.run_dir / REPORT_MD


def _source(obj: object) -> str:
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):  # defined in a notebook cell or the REPL: its name and repr stand in
        return repr(obj)


def _model_ref(model: object) -> str:
    """Name a user's ``nn.Module`` (a snapshot of it: later edits to it do not leak into the run) or
    factory by what it is: class source and weights, so a changed model re-runs its stages."""
    import torch
    from torch import nn

    from edgeslim.models.zoo import register_python_object

    digest = hashlib.sha256()
    if isinstance(model, nn.Module):
        snapshot = copy.deepcopy(model).cpu().eval()
        cls = type(snapshot)
        digest.update(f"{cls.__module__}.{cls.__qualname__}\0{_source(cls)}\0{snapshot!r}".encode())
        for key, tensor in snapshot.state_dict().items():
            digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())

        def factory(**kwargs: Any) -> nn.Module:
            if kwargs:
                raise TypeError(f"an nn.Module instance takes no model.kwargs (got {sorted(kwargs)})")
            return copy.deepcopy(snapshot)

        return register_python_object(cls.__qualname__, digest.hexdigest(), factory)
    if callable(model):
        label = getattr(model, "__qualname__", type(model).__qualname__)
        digest.update(f"{getattr(model, '__module__', '')}.{label}\0{_source(model)}".encode())
        return register_python_object(label, digest.hexdigest(), model)
    raise UserError(f"model: expected an nn.Module or a factory returning one (got {type(model).__name__})")


def _data_ref(data: object) -> str:
    """Name the user's ``(train, val, test)`` splits (datasets, data loaders or ``(x, y)`` pairs), or a
    factory returning them. Their content enters the stage keys through the data fingerprint."""
    from edgeslim.models.zoo import register_python_object

    if isinstance(data, tuple | list):
        if len(data) != 3:
            raise UserError(f"data: expected (train, val, test), got {len(data)} item(s)")
        splits = tuple(data)
        kinds = ", ".join(type(d).__name__ for d in splits)
        return register_python_object("data", hashlib.sha256(kinds.encode()).hexdigest(), lambda: splits)
    if callable(data):
        label = getattr(data, "__qualname__", type(data).__qualname__)
        return register_python_object(label, hashlib.sha256(_source(data).encode()).hexdigest(), data)
    raise UserError(f"data: expected (train, val, test) or a factory returning them (got {type(data).__name__})")


def with_objects(run_config: RunConfig, model: object = None, data: object = None) -> RunConfig:
    """The config with ``model.name``/``data.name`` pointing at the user's own Python objects."""
    update: dict[str, Any] = {}
    if model is not None:
        update["model"] = run_config.model.model_copy(update={"name": _model_ref(model)})
    if data is not None:
        update["data"] = run_config.data.model_copy(update={"name": _data_ref(data)})
    return run_config.model_copy(update=update) if update else run_config


def run(
    config: str | Path | Mapping[str, Any] | RunConfig,
    out: str | Path = "artifacts",
    *,
    model: object = None,
    data: object = None,
    force: bool = False,
    from_stage: str | None = None,
    console: Console | None = None,
) -> RunResult:
    """Run (or resume) a pipeline; unchanged stages are reused, changed measurement settings only re-measure.

    ``model``: your own ``nn.Module`` or a factory returning one, in place of ``model.name`` (for
    notebooks); ``data``: your ``(train, val, test)`` datasets, data loaders or ``(x, y)`` pairs, or a
    factory returning them, in place of ``data.name``."""
    from edgeslim.reports.html import write_run_html
    from edgeslim.reports.run_report import write_markdown

    run_config = with_objects(as_config(config), model, data)
    # under torchrun (the CLI's --nproc, or the user's own script): every rank joins one process group;
    # rank 0 runs the stages and writes, the others train with it
    ours = distributed.launched().size > 1 and distributed.current().size == 1
    distributed.join()
    runner = Runner(
        run_config,
        Path(out),
        force=force,
        from_stage=from_stage,
        console=console,
        listeners=[write_markdown],
    )
    try:
        report = runner.run()
    finally:
        if runner.world.writer and (runner.run_dir / REPORT_JSON).is_file():
            write_run_html(runner.run_dir)
    if ours:  # not after a failure: a rank that stopped may never answer, and the process ends anyway
        distributed.leave()
    return RunResult(runner.run_dir, report)


def open_run(run_dir: str | Path) -> RunResult:
    """A finished (or partly finished) run folder, read back through the same schema."""
    run_dir = Path(run_dir)
    if not (run_dir / REPORT_JSON).is_file():
        raise UserError(f"no {REPORT_JSON} in {run_dir} (is it a run folder?)")
    try:
        return RunResult(run_dir, read_report(run_dir))
    except ValueError as exc:
        raise UserError(f"{run_dir / REPORT_JSON}: not a valid edgeslim report: {exc}") from None


def compare(
    inputs: Iterable[str | Path],
    baseline: str | None = None,
    *,
    min_effect: float | None = None,
    confidence: float | None = None,
) -> Any:
    """Compare latency reports and run folders (``edgeslim compare``); returns a ``Comparison``."""
    from edgeslim.reports import compare as cmp

    problems: list[str] = []
    entries = cmp.load_entries([Path(p) for p in inputs], problems)
    return cmp.compare(
        entries,
        baseline,
        cmp.DEFAULT_MIN_EFFECT if min_effect is None else min_effect,
        cmp.DEFAULT_CONFIDENCE if confidence is None else confidence,
        extra_warnings=problems,
    )
