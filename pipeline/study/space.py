"""The ``search:`` block of a config: what a search may change, what it optimizes, and its budget.

A search space names ordinary config settings by key path (``stages.prune.pruning_ratio``,
``stages.finetune.optimizer.lr``, ``data.max_samples``); each trial is the base config with the
sampled values written at those paths, validated like any config. So the space can reach every
setting a stage has, and a setting that would be invalid is refused before any trial runs.

    search:
      space:
        stages.prune.pruning_ratio: {low: 0.2, high: 0.8}
        stages.prune.importance: [l1, taylor, hessian]
        stages.finetune.optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
      objectives: {accuracy: max, latency_ms: min}
      constraints: {max_accuracy_drop: 0.01}
      sampler: tpe                 # the default; nsga2, cmaes, random
      trials: 16
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from edgeslim.config.schema import StrictModel, format_validation_error
from edgeslim.errors import UserError

Scalar = bool | int | float | str | None
# what a trial's result is judged by: validation accuracy (decisions use the validation split; the
# test split is reported), p50 latency of the final model on the host profile, its file size
OBJECTIVES = ("accuracy", "latency_ms", "size_bytes")


class Range(StrictModel):
    """A numeric range: integers when ``low`` and ``high`` are both written as integers (or ``integer: true``)."""

    low: int | float  # as written: integers stay integers
    high: int | float
    log: bool = Field(False, description="sample on a log scale (learning rates)")
    step: int | float | None = Field(None, gt=0, description="sample on a grid of this step (not with log)")
    integer: bool | None = Field(None, description="integers (default: when low and high are written as integers)")

    @model_validator(mode="after")
    def _consistent(self) -> Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self


class Choices(StrictModel):
    choices: list[Scalar] = Field(min_length=1)


class Constraints(StrictModel):
    """Trials that break a constraint are kept but never on the front (Optuna's constrained samplers)."""

    max_accuracy_drop: float | None = Field(
        None, ge=0, lt=1, description="validation accuracy below the trial's baseline stage (a fraction: 0.01 = 1 pt)"
    )
    max_latency_ms: float | None = Field(None, gt=0)
    max_size_bytes: int | None = Field(None, gt=0)


class PrunerConfig(StrictModel):
    """Stop a trial whose fine-tuning validation curve is clearly worse (Optuna's median rule): after
    ``warmup_epochs`` epochs of ``stage``, once ``startup_trials`` trials have completed, a trial whose
    validation accuracy is below the median of the completed trials' at the same epoch is pruned."""

    name: Literal["median", "none"] = "median"
    stage: str = Field("finetune", description="the training stage whose curve is watched")
    warmup_epochs: int = Field(1, ge=0)
    startup_trials: int = Field(5, ge=1)


class SearchConfig(StrictModel):
    space: dict[str, Range | Choices | list[Scalar]] = Field(min_length=1)
    objectives: dict[Literal["accuracy", "latency_ms", "size_bytes"], Literal["max", "min"]] = Field(
        default_factory=lambda: {"accuracy": "max", "latency_ms": "min"}, min_length=1
    )
    constraints: Constraints = Field(default_factory=Constraints)
    sampler: Literal["tpe", "nsga2", "cmaes", "random"] | None = Field(
        None,
        description="default: tpe, for one objective or several (Optuna's multi-objective TPE): at the few dozen "
        "trials a compression search affords it found better fronts than nsga2 and random search "
        "(docs/search_samplers.md); nsga2 (evolutionary) pays off with larger budgets and populations",
    )
    population_size: int = Field(8, ge=2, description="nsga2: trials per generation")
    crossover: Literal["sbx", "uniform"] = Field(
        "sbx",
        description="nsga2: how a child's numbers come from its parents: 'sbx' (simulated binary crossover, as in "
        "Deb's NSGA-II: new values near the parents) or 'uniform' (Optuna's default: each value copied from one "
        "parent, so a range is only ever explored at the first generation's values and by mutation); "
        "choices are always swapped uniformly",
    )
    mutation: Literal["polynomial", "random"] = Field(
        "polynomial",
        description="nsga2: a mutated number moves near its value ('polynomial', Deb's) or is drawn anew ('random')",
    )
    duplicate_tolerance: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="nsga2: a child with every choice of a trial already in the study and every number within this "
        "fraction of its range of that trial's is drawn again (up to 10 draws): a child 0.2% of a range from its "
        "parent prunes to the same channel counts and spends a trial on a model already measured; 0: children as "
        "Optuna draws them",
    )
    startup_trials: int = Field(4, ge=1, description="tpe/cmaes: random trials before the model takes over")
    initial: Literal["lhs", "random"] = Field(
        "lhs",
        description="nsga2: how the first generation is drawn: 'lhs', the config's own settings (trial 0) plus a "
        "Latin hypercube over the space (each range cut into as many equal strata as points, one point in each; "
        "each choice taken equally often), or 'random', independent draws (Optuna's own). tpe and cmaes keep "
        "Optuna's random startup trials: a Latin hypercube start did not help TPE (docs/search_samplers.md)",
    )
    seed: int = Field(0, ge=0)
    trials: int | None = Field(None, ge=1, description="the study's total trials, over every worker")
    timeout_s: float | None = Field(None, gt=0, description="this process's wall time")
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)

    @field_validator("space")
    @classmethod
    def _lists_are_choices(cls, space: dict[str, Any]) -> dict[str, Range | Choices]:
        out = {}
        for key, spec in space.items():
            if not key or any(not part for part in key.split(".")):
                raise ValueError(f"{key!r}: a key path like stages.prune.pruning_ratio")
            if isinstance(spec, list):
                if not spec:
                    raise ValueError(f"{key}: an empty list of choices")
                spec = Choices(choices=spec)
            out[key] = spec
        return out

    @model_validator(mode="after")
    def _budget_and_sampler(self) -> SearchConfig:
        if self.trials is None and self.timeout_s is None:
            raise ValueError("set a budget: trials and/or timeout_s")
        if self.sampler == "cmaes":
            if len(self.objectives) > 1:
                raise ValueError("sampler cmaes optimizes one objective; use nsga2 or tpe for several")
            if any(isinstance(s, Choices) for s in self.space.values()):
                raise ValueError("sampler cmaes needs a continuous space (ranges only); use tpe with choices")
        return self

    @property
    def sampler_name(self) -> str:
        return self.sampler or "tpe"

    @property
    def directions(self) -> list[str]:
        return ["maximize" if d == "max" else "minimize" for d in self.objectives.values()]


def parse_search(raw: Any) -> SearchConfig:
    if not isinstance(raw, Mapping):
        raise UserError("search: must be a mapping (space, objectives, constraints, sampler, trials ...)")
    try:
        return SearchConfig.model_validate(dict(raw))
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, SearchConfig, ("search",))) from None


# ---------------------------------------------------------------------- key paths into a config


def _stage_entries(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The config's stages as (type, settings), normalizing ``- prune`` / ``- prune: null``."""
    out = []
    for item in config.get("stages") or []:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            ((kind, settings),) = item.items()
            out.append((kind, settings if isinstance(settings, dict) else {}))
        else:
            raise UserError("stages: each entry must be one mapping like '- prune: {pruning_ratio: 0.5}'")
    return out


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at ``path`` in a raw config (in place). ``stages.<type>`` names the one stage of
    that type; ``stages.<n>`` the n-th stage (0-based), for configs with two stages of a type."""
    parts = path.split(".")
    where = f"search.space.{path}"
    node: dict[str, Any] = config
    if parts[0] == "stages":
        if len(parts) < 3:
            raise UserError(f"{where}: name a setting of a stage, e.g. stages.prune.pruning_ratio")
        entries = _stage_entries(config)
        types = [kind for kind, _ in entries]
        ref = parts[1]
        if ref.isdigit():
            index = int(ref)
            if index >= len(entries):
                raise UserError(f"{where}: there are {len(entries)} stages (0-based index)")
        elif types.count(ref) == 1:
            index = types.index(ref)
        elif ref in types:
            raise UserError(
                f"{where}: the config has {types.count(ref)} {ref} stages; name one by index, e.g. "
                f"stages.{types.index(ref)}.{'.'.join(parts[2:])}"
            )
        else:
            raise UserError(f"{where}: no {ref} stage in the config (stages are: {', '.join(types)})")
        kind, settings = entries[index]
        settings = dict(settings)
        config["stages"][index] = {kind: settings}
        node, parts = settings, parts[2:]
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UserError(f"{where}: {'.'.join(parts[: i + 1])} is {child!r}, not a mapping of settings")
        else:
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value


def get_path(config: dict[str, Any], path: str) -> tuple[bool, Any]:
    """``(found, value)`` at ``path`` in a raw config (stages by type or index, as in ``set_path``)."""
    parts = path.split(".")
    node: Any = config
    if parts[0] == "stages":
        entries = _stage_entries(config)
        types = [kind for kind, _ in entries]
        ref = parts[1] if len(parts) > 1 else ""
        if ref.isdigit() and int(ref) < len(entries):
            node = entries[int(ref)][1]
        elif types.count(ref) == 1:
            node = entries[types.index(ref)][1]
        else:
            return False, None
        parts = parts[2:]
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def apply_params(base: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The base config (raw, without its search block) with every sampled value written in."""
    config = copy.deepcopy(base)
    for path, value in params.items():
        set_path(config, path, value)
    return config


def corner_params(cfg: SearchConfig) -> list[dict[str, Any]]:
    """Settings that exercise every bound and choice of the space (checked before the first trial)."""
    corners: list[dict[str, Any]] = []
    width = max([2] + [len(s.choices) for s in cfg.space.values() if isinstance(s, Choices)])
    for i in range(width):
        params = {}
        for path, spec in cfg.space.items():
            if isinstance(spec, Choices):
                params[path] = spec.choices[i % len(spec.choices)]
            else:
                value = spec.low if i % 2 == 0 else spec.high
                params[path] = int(value) if is_int(spec) else float(value)
        corners.append(params)
    return corners


def is_int(spec: Range) -> bool:
    if spec.integer is not None:
        return spec.integer
    return all(isinstance(v, int) and not isinstance(v, bool) for v in (spec.low, spec.high, spec.step or 1))


def validation_message(exc: UserError, params: Mapping[str, Any]) -> str:
    """A trial config refused by the config schema: name the search keys that set it."""
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"search.space: with {shown}: {exc}"
