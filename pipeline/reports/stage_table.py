"""The run's main table as data, shared by the terminal table, ``report.md`` and ``report.html``.

One row per stage: accuracy and size against the reference stage (the baseline; else the first
measured stage), then latency as the runner measured it: every stage's model timed side by side
with the previous stage's and the baseline's models in interleaved rounds (one process), so its
p50 comes with a bootstrap interval and "x faster" = the other model's p50 / this stage's p50 in
the same rounds, with the interval of that ratio. A stage slower than the previous stage beyond the
noise (the whole interval below 1 - min effect) is marked and named in a warning under the table.
Reports written before side-by-side timing show the old ratio of separately measured p50s.
Params, MACs and p90/p99 stay in ``report.json`` (a table narrow enough for a 140-column log).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from edgeslim.engine.records import RunReport, Speedup, StageRecord
from edgeslim.engine.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_EFFECT,
    FASTER,
    RESAMPLES,
    SLOWER,
    TOO_FEW_SAMPLES,
)

HEADERS = [
    "stage",
    "status",
    "accuracy",
    "Δ acc (pt)",
    "size",
    "x smaller",
    "p50 ms",
    "x faster vs baseline",
    "x faster vs previous",
]
# Marks a renderer styles: a speed-up that is real, a slow-down that is real, the reference row.
FASTER_MARK, SLOWER_MARK, REFERENCE_MARK = "faster", "slower", "reference"


@dataclass
class Cell:
    text: str
    mark: str = ""  # "", FASTER_MARK, SLOWER_MARK or REFERENCE_MARK


@dataclass
class StageTable:
    headers: list[str]
    rows: list[list[Cell]]
    caption: str | None  # how latency was measured and what the brackets mean
    warnings: list[str] = field(default_factory=list)  # stages slower than the previous one, beyond the noise

    def text_rows(self) -> list[list[str]]:
        return [[c.text for c in row] for row in self.rows]


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _decimals(value: float) -> int:
    """Decimals that show 3 significant digits of a latency (0.0162, 1.69, 25.3, 142)."""
    return max(0, 2 - math.floor(math.log10(value))) if value > 0 else 3


def fmt_ms(p50: float, ci: tuple[float, float] | None = None) -> str:
    d = _decimals(p50)
    return f"{p50:.{d}f}" + (f" [{ci[0]:.{d}f}–{ci[1]:.{d}f}]" if ci else "")


def _ratio(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def fmt_speedup(s: Speedup) -> str:
    """'1.31x [1.28–1.33]', '0.60x [0.55–0.65] slower', '1.02x (too few samples)'."""
    text = f"{_ratio(s.ratio)}x"
    if s.ci_low is not None and s.ci_high is not None:
        text += f" [{_ratio(s.ci_low)}–{_ratio(s.ci_high)}]"
    if s.verdict == SLOWER:
        text += " slower"
    elif s.verdict == TOO_FEW_SAMPLES:
        text += f" ({TOO_FEW_SAMPLES})"
    return text


def _speedup_cell(s: Speedup | None) -> Cell:
    if s is None:
        return Cell("-")
    return Cell(fmt_speedup(s), {FASTER: FASTER_MARK, SLOWER: SLOWER_MARK}.get(s.verdict, ""))


def _status(stage: StageRecord) -> str:
    """'ran' / 'cached', and 're-measured' when a reused model was timed again."""
    if stage.status == "cached" and stage.measured == "fresh":
        return "cached, re-measured"
    return stage.status


def _latency_cells(stage: StageRecord, ref: StageRecord | None, same_model: bool = False) -> list[Cell]:
    """``same_model``: the stage passed its input's file on unchanged, so any gap to it is noise."""
    m = stage.metrics
    assert m is not None and m.latency_ms is not None
    p50 = Cell(fmt_ms(m.latency_ms.p50, m.latency_p50_ci_ms))
    previous = _speedup_cell(m.speedup_vs_previous)
    if same_model and m.speedup_vs_previous is not None:
        previous = Cell(f"{_ratio(m.speedup_vs_previous.ratio)}x (same model)")
    if stage is ref:
        return [p50, Cell("reference", REFERENCE_MARK), previous]
    if m.speedup_vs_reference is not None or m.speedup_vs_previous is not None:  # timed side by side
        return [p50, _speedup_cell(m.speedup_vs_reference), previous]
    rm = ref.metrics if ref is not None else None  # an older report: p50s measured one at a time
    if rm is not None and rm.latency_ms is not None and m.latency_p50_ci_ms is None:
        return [p50, Cell(f"{rm.latency_ms.p50 / m.latency_ms.p50:.1f}x"), Cell("-")]
    return [p50, Cell("-"), Cell("-")]


def _row(stage: StageRecord, ref: StageRecord | None, same_model: bool = False) -> list[Cell]:
    m = stage.metrics
    if m is None or m.latency_ms is None:
        return [Cell(stage.label), Cell(_status(stage))] + [Cell("-")] * (len(HEADERS) - 2)
    rm = ref.metrics if ref is not None else None
    cells = [
        stage.label,
        _status(stage),
        f"{m.accuracy * 100:.2f}%",
        f"{(m.accuracy - rm.accuracy) * 100:+.2f}" if rm else "-",
        fmt_size(m.size_bytes),
        f"{rm.size_bytes / m.size_bytes:.1f}x" if rm else "-",
    ]
    return [Cell(c) for c in cells] + _latency_cells(stage, ref, same_model)


def _span(values: list[int | None]) -> str:
    """'10', or '7–10' when stages differ (a time budget ended some rounds early)."""
    known = sorted({v for v in values if v is not None})
    if not known:
        return "?"
    return str(known[0]) if len(known) == 1 else f"{known[0]}–{known[-1]}"


def _caption(report: RunReport, ref: StageRecord | None) -> str | None:
    if ref is None or ref.metrics is None:
        return None
    m = ref.metrics
    where = f"latency: ONNX Runtime CPU, {m.threads} thread(s), batch {m.batch_size}"
    timed = [s.metrics for s in report.measured() if s.metrics is not None and s.metrics.latency_p50_ci_ms]
    if not timed:
        return f"{where}; ratios vs {ref.label}"
    rounds = _span([t.latency_rounds for t in timed])
    runs = _span([t.latency_runs for t in timed])
    speedups = [s for t in timed for s in (t.speedup_vs_previous, t.speedup_vs_reference) if s is not None]
    confidence = next((t.latency_confidence for t in timed if t.latency_confidence), DEFAULT_CONFIDENCE)
    min_effect = speedups[0].min_effect if speedups else DEFAULT_MIN_EFFECT
    return (
        f"{where}. Each stage is timed side by side with the previous stage and {ref.label}: "
        f"{rounds} interleaved rounds in one process, {runs} timed runs per model. "
        f"[a–b]: {confidence:.0%} CI, seeded bootstrap ({RESAMPLES:,} resamples) of the median or of the ratio "
        f"of medians. x faster = the other model's p50 / this stage's p50 in the same rounds; marked slower when "
        f"the whole interval is below {1 - min_effect:.2f} (faster: above {1 + min_effect:.2f}), else within noise."
    )


def _warnings(report: RunReport, same: set[int] | None = None) -> list[str]:
    """Stages slower than the stage before them beyond the noise (a stage that passed the same file on
    is not: its gap is noise); the final model slower than the baseline."""
    out = []
    measured = report.measured()
    for stage in measured:
        s = stage.metrics.speedup_vs_previous if stage.metrics else None
        if s is not None and s.slower and stage.index not in (same or set()):
            out.append(
                f"{stage.label} is slower than {s.against}: {fmt_speedup(s)} (timed side by side; the whole "
                f"{s.confidence:.0%} interval is below {1 - s.min_effect:.2f})"
            )
    final = measured[-1] if measured else None
    s = final.metrics.speedup_vs_reference if final is not None and final.metrics else None
    if final is not None and s is not None and s.slower:
        out.append(f"the final model, {final.label}, is slower than {s.against}: {fmt_speedup(s)}")
    return out


def _same_as_previous(report: RunReport) -> set[int]:
    """Indexes of measured stages whose deployable file is the previous measured stage's."""
    measured = report.measured()
    return {
        b.index
        for a, b in itertools.pairwise(measured)
        if a.metrics and b.metrics and a.metrics.model_sha256 == b.metrics.model_sha256
    }


def stage_table(report: RunReport) -> StageTable:
    ref = report.reference()
    same = _same_as_previous(report)
    rows = [_row(s, ref, s.index in same) for s in report.stages]
    return StageTable(HEADERS, rows, _caption(report, ref), _warnings(report, same))
