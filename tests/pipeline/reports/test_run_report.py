"""The run's main table in the terminal, report.md and report.html: p50 with its interval, x faster vs the
baseline and vs the previous stage with theirs, and a stage slower than its input marked and named.

The latencies are synthetic samples fed through the runner's own record builder, so the marks are
deterministic; no model is timed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from edgeslim.engine.records import REPORT_JSON, RunReport, StageRecord
from edgeslim.engine.runner import side_by_side_fields
from edgeslim.engine.store import write_json
from edgeslim.reports.html import write_run_html
from edgeslim.reports.run_report import render_markdown, rich_table
from edgeslim.reports.stage_table import FASTER_MARK, HEADERS, REFERENCE_MARK, SLOWER_MARK, stage_table
from tests.conftest import small_config
from tests.pipeline.engine.test_stats import timings

# stage -> (median latency scale, accuracy, size): quantize makes the model slower than its input
STAGES = {
    "train": (2.0, 0.95, 40_000),
    "baseline": (2.0, 0.95, 40_000),
    "prune": (1.0, 0.93, 20_000),
    "quantize": (1.25, 0.93, 8_000),
}


def metrics(samples: list[float], accuracy: float, size: int, **side_by_side: Any) -> dict[str, Any]:
    s = sorted(samples)
    return {
        "accuracy": accuracy,
        "val_accuracy": accuracy,
        "size_bytes": size,
        "params": 1000,
        "model_sha256": "ab" * 32,
        "deployable": "model.onnx",
        "latency_ms": {"p50": float(s[len(s) // 2]), "p90": s[-20], "p99": s[-2], "mean": 1.0, "std": 0.1},
        "latency_runs": len(samples),
        "latency_rounds": 10,
        "latency_samples_ms": samples,
        "threads": 1,
        "batch_size": 1,
        **side_by_side,
    }


def synthetic_report(side_by_side: bool = True) -> RunReport:
    """Four stages as the runner records them; each stage's partners timed in its own rounds."""
    stages = []
    labels: dict[str, str] = {}
    previous: tuple[str, float] | None = None
    for index, (name, (scale, accuracy, size)) in enumerate(STAGES.items()):
        label = f"{index:02d}-{name}"
        own = list(timings(scale, seed=index))
        partners = {}
        if previous is not None:
            partners["previous"] = previous
        if "reference" in labels:
            partners["reference"] = (labels["reference"], STAGES["baseline"][0])
        beside = {role: list(timings(s, seed=10 * index + i)) for i, (role, (_, s)) in enumerate(partners.items())}
        fields = side_by_side_fields(own, beside, {role: lab for role, (lab, _) in partners.items()})
        stages.append(
            StageRecord(
                index=index,
                name=name,
                role="reference" if name == "baseline" else "transform",
                dir=label,
                status="ran",
                measured="fresh",
                metrics={
                    **metrics(own, accuracy, size, **(fields if side_by_side else {})),
                    "model_sha256": f"{index:02d}" * 32,  # each stage made its own model
                },
            )
        )
        if name == "baseline":
            labels["reference"] = label
        previous = (label, scale)
    cfg = small_config(list(STAGES))
    return RunReport(
        run="t",
        created="now",
        config=cfg,
        config_hash="0" * 64,
        versions={},
        data_fingerprint="f",
        test_samples=100,
        stages=stages,
    )


def test_the_record_carries_both_ratios_with_intervals():
    report = synthetic_report()
    quantize = report.stage("quantize").metrics
    assert quantize is not None and quantize.latency_p50_ci_ms is not None
    prev, ref = quantize.speedup_vs_previous, quantize.speedup_vs_reference
    assert prev is not None and prev.against == "02-prune" and prev.slower
    assert prev.ci_low is not None and prev.ci_high is not None and prev.ci_low <= prev.ratio <= prev.ci_high < 1
    assert ref is not None and ref.against == "01-baseline" and not ref.slower and ref.ci_low > 1
    baseline = report.stage("baseline").metrics
    assert baseline.speedup_vs_reference is None and baseline.speedup_vs_previous.against == "00-train"
    # the JSON round trip keeps every field
    again = RunReport.model_validate(report.to_json()).stage("quantize").metrics
    assert again.speedup_vs_previous == prev and again.latency_p50_ci_ms == quantize.latency_p50_ci_ms


def test_table_marks_the_stage_slower_than_its_input():
    table = stage_table(synthetic_report())
    assert table.headers == HEADERS
    rows = {row[0].text: row for row in table.rows}
    p50, vs_base, vs_prev = (HEADERS.index(h) for h in ("p50 ms", "x faster vs baseline", "x faster vs previous"))
    quantize, prune = rows["03-quantize"], rows["02-prune"]
    assert quantize[vs_prev].mark == SLOWER_MARK and quantize[vs_prev].text.endswith(" slower")
    assert quantize[vs_prev].text.startswith("0.8") and "[" in quantize[vs_prev].text
    assert quantize[vs_base].mark == FASTER_MARK and "slower" not in quantize[vs_base].text
    assert prune[vs_prev].mark == FASTER_MARK and abs(float(prune[vs_base].text.split("x")[0]) - 2) < 0.1
    assert rows["01-baseline"][vs_base].mark == REFERENCE_MARK and rows["00-train"][vs_prev].text == "-"
    assert "[" in quantize[p50].text and "–" in quantize[p50].text  # p50 [low–high]
    assert len(table.warnings) == 1 and table.warnings[0].startswith("03-quantize is slower than 02-prune: 0.8")
    assert table.caption is not None
    for fact in ("1 thread(s), batch 1", "side by side", "10 interleaved rounds", "95% CI", "below 0.98"):
        assert fact in table.caption


def test_every_renderer_shows_the_mark_and_the_warning(tmp_path: Path):
    report = synthetic_report()
    console = Console(width=140, record=True)
    console.print(rich_table(report))
    text = console.export_text()
    assert "x faster vs" in text and "slower" in text
    assert "⚠ 03-quantize is slower than 02-prune" in text
    md = render_markdown(report)
    assert "| stage | status | accuracy | Δ acc (pt) | size | x smaller | p50 ms | x faster vs baseline |" in md
    quantize_row = next(line for line in md.splitlines() if line.startswith("| 03-quantize |"))
    assert "slower**" in quantize_row and quantize_row.count("**") == 2
    assert "> ⚠ 03-quantize is slower than 02-prune" in md and "interleaved rounds" in md
    write_json(tmp_path / REPORT_JSON, report.to_json())
    page = write_run_html(tmp_path).read_text()
    assert "<h2>Stages</h2>" in page and '<td class="slower">0.8' in page
    assert '<p class="warning">⚠ 03-quantize is slower than 02-prune' in page


def test_a_report_from_before_side_by_side_timing_still_renders():
    table = stage_table(synthetic_report(side_by_side=False))
    rows = {row[0].text: [c.text for c in row] for row in table.rows}
    assert rows["02-prune"][-2:] == ["2.0x", "-"] and "[" not in rows["02-prune"][-3]  # p50s measured one by one
    assert table.warnings == []
    assert table.caption == "latency: ONNX Runtime CPU, 1 thread(s), batch 1; ratios vs 01-baseline"


def test_a_stage_that_passes_the_same_file_on_is_never_called_faster_or_slower():
    """A benchmark stage times its input's own file beside it: any gap is noise, said as such."""
    report = synthetic_report()
    quantize = report.stages[3]
    assert quantize.metrics.speedup_vs_previous.slower  # 1.25x the prune stage's time
    quantize.metrics.model_sha256 = report.stages[2].metrics.model_sha256  # as if it passed prune's file on
    table = stage_table(report)
    cell = table.rows[3][-1]
    assert cell.text.endswith("x (same model)") and cell.mark == ""
    assert not any(w.startswith("03-quantize is slower") for w in table.warnings)
