"""The stage contract: a small class with a pydantic ``Config`` and ``run(ctx) -> StageResult``.

Stages declare which artifact kinds they accept and what they produce, so the runner can
check a whole plan before any work starts. The runner knows nothing else about them; stages
never import each other and share code through ``pipeline``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from pipeline.artifacts import TORCH, Artifact
from pipeline.config import RunConfig
from pipeline.data import DataSplits
from pipeline.errors import UserError
from pipeline.torch_model import ModelLoader, count_params_and_macs, save_torch_artifact

_REGISTRY: dict[str, type[Stage]] = {}
ONNX_MODEL_FILE = "model.onnx"  # the model file of every ONNX artifact


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to configs under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def stage_registry() -> dict[str, type[Stage]]:
    import stages  # noqa: F401  (importing the package registers every stage)

    return dict(_REGISTRY)


@dataclass
class StageResult:
    artifact: Artifact
    details: dict[str, Any] = field(default_factory=dict)  # stage-specific numbers for the report
    notes: list[str] = field(default_factory=list)  # human-readable lines for the report


@dataclass
class StageContext:
    """What a stage may use: the run config, data, its input, earlier artifacts, a folder to write."""

    config: RunConfig
    index: int
    where: str  # config path of this stage, for error messages: "stages[3].finetune"
    data: DataSplits
    models: ModelLoader
    input: Artifact
    out_dir: Path
    earlier: dict[int, Artifact]  # artifacts of the stages before this one, by index

    @property
    def seed(self) -> int:
        return self.config.seed + self.index

    def artifact_of(self, ref: str | int) -> Artifact:
        """The artifact of an earlier stage, by type name or index (e.g. the distillation teacher)."""
        i = self.config.stage_index(ref)
        if i not in self.earlier:
            raise UserError(f"{self.where}: stage '{ref}' must come before this stage")
        return self.earlier[i]

    def example(self, n: int = 2) -> torch.Tensor:
        return self.data.example_batch(n)


def onnx_artifact(ctx: StageContext, kind: str, extra: dict[str, Any] | None = None) -> Artifact:
    """Save and return the ``model.onnx`` artifact of an ONNX-producing stage (size facts carried over)."""
    artifact = Artifact(
        kind=kind,
        directory=ctx.out_dir,
        meta={
            "files": {"model": ONNX_MODEL_FILE},
            "params": ctx.input.meta.get("params"),
            "macs": ctx.input.meta.get("macs"),
            **(extra or {}),
        },
    )
    artifact.save()
    return artifact


def save_same_architecture(ctx: StageContext, model: torch.nn.Module) -> Artifact:
    """Save a float PyTorch model built like the input (same pruning history), with params and MACs."""
    params, macs = count_params_and_macs(model, ctx.example())
    return save_torch_artifact(
        ctx.out_dir,
        model,
        kind=TORCH,
        pruning_history=ctx.models.history_of(ctx.input),
        params=params,
        macs=macs,
    )


class Stage(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    accepts: ClassVar[tuple[str, ...]]  # artifact kinds this stage can take as input

    def __init__(self, config: BaseModel):
        self.config = config

    def output_kind(self, input_kind: str) -> str:
        """The artifact kind this stage produces from ``input_kind`` (default: unchanged)."""
        return input_kind

    def replaces_head(self) -> bool:
        """True if this stage gives the model a new output layer (so its class count may differ before)."""
        return False

    def input_files(self, config: RunConfig) -> list[Path]:
        """Files outside the run this stage reads (e.g. teacher weights): their bytes join the cache key."""
        return []

    def run_settings(self, config: RunConfig) -> dict[str, Any]:
        """Run-level settings this stage reads besides its own (e.g. device profiles): they join its cache key."""
        return {}

    def fallback(self, attempt: int, previous: StageResult) -> Stage | None:
        """A next-safer version of this stage for the accuracy guard's ``fallback`` mode.

        ``attempt`` counts from 1; ``previous`` is the result that breached the budget. ``None``
        means there is nothing safer to try (e.g. prune: a lower ratio; quantize: more FP32 nodes).
        """
        return None

    def check_plan(self, input_kind: str, where: str) -> None:  # noqa: B027 - optional hook
        """Raise UserError when the settings cannot work on this input (before anything runs)."""

    def check_inputs(self, config: RunConfig, index: int, where: str) -> None:
        """Raise UserError when something this stage will read is missing or unusable (before anything
        runs, so a bad file found late cannot cost the stages before it). Default: its input files exist."""
        for path in self.input_files(config):
            if not path.is_file():
                raise UserError(f"{where}: file not found: {path}")

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult: ...
