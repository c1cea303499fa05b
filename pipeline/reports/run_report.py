"""People-facing run reports: ``report.md``, ``report.html`` and the terminal table, all made from
the ``RunReport`` the engine writes to ``report.json``.

Ratios are taken against the run's reference stage (the baseline) when it has one, else the
first measured stage: "x smaller" = reference size / stage size, "x faster" = reference p50 / stage p50.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.table import Table

from edgeslim.engine.records import REPORT_JSON, RunReport, StageRecord
from edgeslim.engine.store import read_json, write_text
from edgeslim.reports.html import write_run_html

REPORT_MD = "report.md"


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _status(stage: StageRecord) -> str:
    """'ran' / 'cached', and 're-measured' when a reused model was timed again."""
    if stage.status == "cached" and stage.measured == "fresh":
        return "cached, re-measured"
    return stage.status


def table_rows(report: RunReport) -> list[list[str]]:
    """Rows: stage, status, accuracy, Δ accuracy, size, x smaller, params, p50, p99, x faster."""
    ref = report.reference()
    rm = ref.metrics if ref else None
    rows = []
    for stage in report.stages:
        m = stage.metrics
        if m is None or m.latency_ms is None:
            rows.append([stage.label, _status(stage)] + ["-"] * 8)
            continue
        acc, size, p50 = m.accuracy, m.size_bytes, m.latency_ms.p50
        ref_p50 = rm.latency_ms.p50 if rm is not None and rm.latency_ms is not None else None
        rows.append(
            [
                stage.label,
                _status(stage),
                f"{acc * 100:.2f}%",
                f"{(acc - rm.accuracy) * 100:+.2f}" if rm else "-",
                _fmt_size(size),
                f"{rm.size_bytes / size:.1f}x" if rm else "-",
                f"{m.params:,}" if m.params is not None else "-",
                f"{p50:.3f}",
                f"{m.latency_ms.p99:.3f}",
                f"{ref_p50 / p50:.1f}x" if ref_p50 is not None else "-",
            ]
        )
    return rows


HEADERS = [
    "stage",
    "status",
    "accuracy",
    "Δ acc (pt)",
    "size",
    "x smaller",
    "params",
    "p50 ms",
    "p99 ms",
    "x faster",
]


def rich_table(report: RunReport) -> Table:
    ref = report.reference()
    caption = (
        f"latency: ONNX Runtime, {ref.metrics.threads} thread(s), batch {ref.metrics.batch_size}; ratios vs {ref.label}"
        if ref and ref.metrics
        else None
    )
    table = Table(title=f"edgeslim run '{report.run}'", caption=caption)
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right")
    for row in table_rows(report):
        table.add_row(*row)
    return table


def render_markdown(report: RunReport) -> str:
    ref = report.reference()
    lines = [f"# edgeslim run `{report.run}`", ""]
    lines.append(
        f"Created {report.created} on {report.device.get('cpu', '?')} "
        f"({report.device.get('logical_cores', '?')} logical cores)."
    )
    if ref and ref.metrics:
        m = ref.metrics
        lines.append(
            f"Every stage is measured the same way: accuracy with ONNX Runtime on the test split "
            f"({report.test_samples} samples); size = bytes of the deployable ONNX file; latency = "
            f"ONNX Runtime CPU, {m.threads} thread(s), batch {m.batch_size}, median over "
            f"{m.latency_runs or '?'} runs after warm-up. Ratios are against `{ref.label}`."
        )
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    for stage in report.stages:
        if stage.notes or stage.error:
            lines += ["", f"**{stage.label}**"]
            lines += [f"- {note}" for note in stage.notes]
            if stage.error:
                lines.append(f"- error: {stage.error}")
    lines += guard_section(report)
    lines += [
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(report.config, sort_keys=False).rstrip(),
        "```",
    ]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in report.versions.items()]
    return "\n".join(lines) + "\n"


def guard_section(report: RunReport) -> list[str]:
    """What each stage's accuracy guard measured and did, and the run-level verdict (validation split)."""
    rows = []
    for stage in report.stages:
        guard = stage.guard
        if not guard:
            continue
        for attempt in guard.attempts:
            rows.append(
                f"| {stage.label} | {guard.reference_stage} "
                f"{guard.reference_val_accuracy:.2%} | {guard.max_accuracy_drop * 100:.2f} pt | "
                f"{attempt.setting} | {attempt.val_accuracy:.2%} | {attempt.drop * 100:+.2f} pt | "
                f"{'yes' if attempt.ok else 'no'} | {guard.action if attempt is guard.attempts[-1] else ''} |"
            )
    run_guard = report.guard
    if not rows and not run_guard:
        return []
    lines = ["", "## Accuracy guard", ""]
    if rows:
        lines += [
            "Validation accuracy of every attempt against the stage's reference (drop = reference − attempt).",
            "",
            "| stage | reference (val) | budget | attempt | val accuracy | drop | within | action |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    if run_guard:
        verdict = "within budget" if run_guard.ok else f"over budget; deliverable: {run_guard.deliverable}"
        lines += [
            "",
            f"Run guard: final model {run_guard.final_stage} at {run_guard.final_val_accuracy:.2%} vs baseline "
            f"{run_guard.baseline_val_accuracy:.2%} (drop {run_guard.drop * 100:.2f} pt, budget "
            f"{run_guard.max_accuracy_drop * 100:.2f} pt): {verdict}.",
        ]
    return lines


def write_markdown(run_dir: Path, report: RunReport) -> None:
    """report.md from the run's report (a runner listener: called after every stage)."""
    write_text(run_dir / REPORT_MD, render_markdown(report))


def rerender(run_dir: Path) -> Path:
    """``edgeslim report``: rebuild report.md from report.json."""
    from edgeslim.errors import UserError

    path = run_dir / REPORT_JSON
    if not path.is_file():
        raise UserError(f"no {REPORT_JSON} in {run_dir} (is it a run folder?)")
    try:
        report = RunReport.model_validate(read_json(path))
        text = render_markdown(report)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a valid edgeslim report ({type(exc).__name__}: {exc})") from None
    write_text(run_dir / REPORT_MD, text)
    write_run_html(run_dir)
    return run_dir / REPORT_MD
