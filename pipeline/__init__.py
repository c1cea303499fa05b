"""edgeslim: turn a trained model into a small, fast, accurate model for edge devices.

The public API (loaded on first use, so ``import edgeslim`` stays cheap)::

    import edgeslim

    result = edgeslim.run("configs/digits_quick.yaml")   # or a dict, or a RunConfig
    result.final.metrics.accuracy, result.deliverable
    edgeslim.compare(["artifacts/run_a", "artifacts/run_b"])
    edgeslim.search("configs/search_digits.yaml")      # a config with a search: block

User mistakes raise ``edgeslim.UserError`` (one line, the same message the CLI prints); a stage
that fails a check it was asked to make raises ``edgeslim.StageFailed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeslim.errors import StageFailed, UserError

if TYPE_CHECKING:
    from edgeslim.api import (
        RunResult,
        compare,
        load_config,
        open_run,
        parse_config,
        register_stage,
        run,
        stage_types,
    )
    from edgeslim.config.schema import RunConfig
    from edgeslim.engine.records import RunReport, StageRecord
    from edgeslim.engine.stage import PlanRequest, Stage, StageContext, StagePlan, StageResult
    from edgeslim.study.search import SearchResult, export_best, search

_LAZY = {
    "run": "edgeslim.api",
    "load_config": "edgeslim.api",
    "parse_config": "edgeslim.api",
    "compare": "edgeslim.api",
    "open_run": "edgeslim.api",
    "register_stage": "edgeslim.api",
    "stage_types": "edgeslim.api",
    "RunResult": "edgeslim.api",
    "search": "edgeslim.study.search",
    "export_best": "edgeslim.study.search",
    "SearchResult": "edgeslim.study.search",
    "RunConfig": "edgeslim.config.schema",
    "RunReport": "edgeslim.engine.records",
    "StageRecord": "edgeslim.engine.records",
    "Stage": "edgeslim.engine.stage",
    "StageContext": "edgeslim.engine.stage",
    "StagePlan": "edgeslim.engine.stage",
    "PlanRequest": "edgeslim.engine.stage",
    "StageResult": "edgeslim.engine.stage",
}

__all__ = [  # noqa: RUF022 - grouped: errors, functions, types
    "StageFailed",
    "UserError",
    "run",
    "load_config",
    "parse_config",
    "compare",
    "open_run",
    "register_stage",
    "stage_types",
    "search",
    "export_best",
    "RunResult",
    "SearchResult",
    "RunConfig",
    "RunReport",
    "StageRecord",
    "Stage",
    "StageContext",
    "StagePlan",
    "PlanRequest",
    "StageResult",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeslim' has no attribute {name!r}")
