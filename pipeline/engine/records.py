"""What a run records, as one schema: ``StageRecord`` per stage and ``RunReport`` for the run.

The runner emits these; ``report.json`` is ``RunReport`` dumped to JSON, and everything that
reads a run (report.md, HTML, ``compare``, the run guard, the Python API) reads it back through
``RunReport.model_validate``. Models are open (unknown keys kept) so reports written by a newer
edgeslim still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeslim.engine.stats import SLOWER
from edgeslim.engine.store import read_json, stage_label

REPORT_JSON = "report.json"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LatencyStats(_Open):
    p50: float
    p90: float
    p99: float
    mean: float
    std: float


class Speedup(_Open):
    """This stage's model against another stage's, timed side by side in the same interleaved rounds
    (one worker process): ratio = median(other) / median(this), > 1 = this stage is faster. The
    interval is a seeded percentile bootstrap of the ratio of medians; the verdict is
    ``edgeslim compare``'s noise rule: faster / slower only when the whole interval clears
    1 ± ``min_effect``, else within noise."""

    against: str  # the other stage's folder label, e.g. "01-baseline"
    ratio: float
    ci_low: float | None = None  # None: too few samples for an interval
    ci_high: float | None = None
    confidence: float
    min_effect: float
    verdict: str
    against_p50_ms: float  # the other model's p50 in these rounds (not its own row's measurement)

    @property
    def slower(self) -> bool:
        """Slower beyond the noise: the whole interval below 1 - min_effect."""
        return self.verdict == SLOWER


class StageMetrics(_Open):
    """How a stage's deployable model did: accuracy and size (made with the stage) and latency
    (measured separately, side by side with the previous stage's and the baseline's models, see
    ``edgeslim.engine.measure``). Reports written before side-by-side timing lack the interval and
    speed-up fields."""

    accuracy: float
    val_accuracy: float
    size_bytes: int
    params: int | None = None
    macs: int | None = None
    model_sha256: str
    deployable: str
    latency_ms: LatencyStats | None = None
    latency_runs: int | None = None
    latency_rounds: int | None = None  # interleaved rounds the runs were spread over
    latency_samples_ms: list[float] = Field(default_factory=list)
    latency_p50_ci_ms: tuple[float, float] | None = None  # bootstrap interval of the median
    latency_confidence: float | None = None  # of latency_p50_ci_ms and the speed-up intervals
    speedup_vs_previous: Speedup | None = None  # the previous measured stage (None for the first)
    speedup_vs_reference: Speedup | None = None  # the reference stage (None for it and stages before it)
    input_shape: list[int] | None = None
    session_init_ms: float | None = None
    peak_rss_mb: float | None = None
    threads: int | None = None
    batch_size: int | None = None


class GuardAttempt(_Open):
    setting: str
    val_accuracy: float
    drop: float
    ok: bool


class GuardRecord(_Open):
    """One stage's accuracy-guard outcome: every attempt and the action taken."""

    max_accuracy_drop: float
    reference_stage: str
    reference_val_accuracy: float
    attempts: list[GuardAttempt]
    action: str


class RunGuardOutcome(_Open):
    max_accuracy_drop: float
    on_breach: str
    baseline_val_accuracy: float
    final_stage: str
    final_val_accuracy: float
    drop: float
    ok: bool
    deliverable: str


class StageRecord(_Open):
    index: int
    name: str  # the stage type, e.g. "prune"
    role: str = "transform"  # "reference" for the stage every ratio is taken against
    dir: str  # folder name in the run, e.g. "02-prune"
    status: Literal["ran", "cached", "failed"]
    measured: Literal["fresh", "cached"] | None = None  # latency: measured now, or reused
    duration_s: float | None = None
    metrics: StageMetrics | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    guard: GuardRecord | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return stage_label(self.index, self.name)


class RunReport(_Open):
    run: str
    created: str
    config: dict[str, Any]
    config_hash: str
    versions: dict[str, str]
    device: dict[str, Any] = Field(default_factory=dict)
    device_profile: dict[str, Any] = Field(default_factory=dict)
    data_fingerprint: str
    test_samples: int
    stages: list[StageRecord] = Field(default_factory=list)
    guard: RunGuardOutcome | None = None

    def measured(self) -> list[StageRecord]:
        return [s for s in self.stages if s.metrics is not None]

    def reference(self) -> StageRecord | None:
        """The stage ratios are taken against: the reference-role stage (baseline), else the first measured."""
        measured = self.measured()
        return next((s for s in measured if s.role == "reference"), measured[0] if measured else None)

    def stage(self, label_or_name: str) -> StageRecord:
        """A stage by folder label ("02-prune") or type name (first match)."""
        for s in self.stages:
            if label_or_name in (s.label, s.dir, s.name):
                return s
        raise KeyError(label_or_name)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def read_report(run_dir: Path) -> RunReport:
    return RunReport.model_validate(read_json(run_dir / REPORT_JSON))
