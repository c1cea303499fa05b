"""The stage contract: ``Stage[C]``, a small class generic in its pydantic config ``C``.

A stage answers two questions. ``plan(request)`` — before anything runs — says what it makes
from an input kind and what besides its own settings its output depends on (files it reads,
run-level settings), and refuses settings that cannot work (``UserError``). ``run(ctx, cfg)``
turns the input artifact into an output artifact in ``ctx.out_dir``. The runner knows nothing
else about stages; stages never import each other and share code through ``edgeslim``.

The config class is taken from the generic argument: ``class Prune(Stage[PruneConfig])``.
"""

from __future__ import annotations

import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel

from edgeslim.config.schema import RunConfig
from edgeslim.data.batches import Inputs
from edgeslim.data.datasets import DataSplits
from edgeslim.engine.store import ONNX_MODEL_FILE, TORCH, Artifact, stage_label
from edgeslim.errors import UserError
from edgeslim.models.loader import ModelLoader, count_params_and_macs, save_torch_artifact

C = TypeVar("C", bound=BaseModel)


class Role(StrEnum):
    """What a stage is to the rest of the run."""

    TRANSFORM = "transform"  # makes a new model from its input (most stages)
    REFERENCE = "reference"  # the model every ratio, guard and comparison is taken against (baseline)


@dataclass(frozen=True)
class PlanRequest:
    """What a stage is asked at plan time: its input kind, the run config and its place in it."""

    input_kind: str
    config: RunConfig
    index: int

    @property
    def where(self) -> str:
        return f"stages[{self.index}].{self.config.stages[self.index].type}"


@dataclass(frozen=True)
class StagePlan:
    """A stage's answer at plan time.

    ``key_parts``: run-level settings besides its own that change its output (they join its cache
    key); ``input_files``: files outside the run it reads (their bytes join the key);
    ``changes_classes``: it gives the model a new output layer (earlier class counts may differ).
    """

    output_kind: str
    input_files: tuple[Path, ...] = ()
    key_parts: dict[str, Any] = field(default_factory=dict)
    changes_classes: bool = False


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
    def label(self) -> str:
        """This stage's folder name and report label, e.g. ``02-prune``."""
        return stage_label(self.index, self.config.stages[self.index].type)

    @property
    def seed(self) -> int:
        return self.config.seed + self.index

    def artifact_of(self, ref: str | int) -> Artifact:
        """The artifact of an earlier stage, by type name or index (e.g. the distillation teacher)."""
        i = self.config.stage_index(ref)
        if i not in self.earlier:
            raise UserError(f"{self.where}: stage '{ref}' must come before this stage")
        return self.earlier[i]

    def example(self, n: int = 2) -> Inputs:
        return self.data.example_batch(n)

    def calibration_samples(self, n: int) -> tuple[Inputs, torch.Tensor]:
        """``n`` training samples (inputs, labels) drawn with this stage's seed: what pruning criteria,
        importance-scaled learning rates and quantization calibrate on (never val or test)."""
        train = self.data.train
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))[:n]
        return train.take(pick)


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


def refuse_missing_files(files: tuple[Path, ...], where: str) -> None:
    """Plan-time check shared by stages that read files: each must exist."""
    for path in files:
        if not path.is_file():
            raise UserError(f"{where}: file not found: {path}")


class Stage(ABC, Generic[C]):
    """One step of a run. Subclasses set ``name`` and ``accepts`` and implement ``run``.

    ``Config`` is filled in from the generic argument (``Stage[PruneConfig]``); ``role`` marks the
    reference stage; ``fallback`` gives the accuracy guard a next-safer version of the stage.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    accepts: ClassVar[tuple[str, ...]]  # artifact kinds this stage can take as input
    role: ClassVar[Role] = Role.TRANSFORM
    # The accuracy guard a stage gets when its entry names none (``guard: null`` turns it off).
    default_guard: ClassVar[dict[str, Any] | None] = None
    # Trains: under torchrun every rank runs it together (data-parallel); its numbers depend on the
    # number of processes, which joins its cache key. Other stages run on rank 0 only.
    distributed: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Stage:
                (config_cls,) = typing.get_args(base)
                if isinstance(config_cls, type) and issubclass(config_cls, BaseModel):
                    cls.Config = config_cls

    def __init__(self, config: C):
        self.config: C = config

    def plan(self, request: PlanRequest) -> StagePlan:
        """Default: the output has the input's kind, reads no files, depends on nothing else."""
        return StagePlan(output_kind=request.input_kind)

    def fallback(self, attempt: int, previous: StageResult) -> Stage[C] | None:
        """A next-safer version of this stage for the accuracy guard's ``fallback`` mode.

        ``attempt`` counts from 1; ``previous`` is the result that breached the budget. ``None``
        means there is nothing safer to try (e.g. prune: a lower ratio; quantize: more FP32 nodes).
        """
        return None

    def execute(self, ctx: StageContext) -> StageResult:
        """What the runner calls: ``run`` with this instance's typed settings."""
        return self.run(ctx, self.config)

    @abstractmethod
    def run(self, ctx: StageContext, cfg: C) -> StageResult: ...
