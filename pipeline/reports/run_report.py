"""People-facing run reports: ``report.md``, ``report.html`` and the terminal table, all made from
the ``RunReport`` the engine writes to ``report.json``.

Ratios are taken against the run's reference stage (the baseline) when it has one, else the
first measured stage: "x smaller" = reference size / stage size. Latency comes as the runner timed
it, each stage side by side with the previous stage and the baseline: p50 with its interval,
"x faster vs baseline" and "x faster vs previous" with theirs (``edgeslim.reports.stage_table``).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.table import Table
from rich.text import Text

from edgeslim.engine.records import REPORT_JSON, RunReport
from edgeslim.engine.store import read_json, write_text
from edgeslim.reports import quant_report
from edgeslim.reports.html import write_run_html
from edgeslim.reports.stage_table import (
    FASTER_MARK,
    REFERENCE_MARK,
    SLOWER_MARK,
    Cell,
    stage_table,
)

REPORT_MD = "report.md"


def table_rows(report: RunReport) -> list[list[str]]:
    """Rows of the main table as text (see ``edgeslim.reports.stage_table``)."""
    return stage_table(report).text_rows()


_STYLE = {FASTER_MARK: "green", SLOWER_MARK: "bold red", REFERENCE_MARK: "cyan"}


def rich_table(report: RunReport) -> Table:
    """The terminal table; the caption says how latency was measured and names slower stages."""
    table_data = stage_table(report)
    caption = Text()
    if table_data.caption:
        caption.append(table_data.caption, style="dim")
    for warning in table_data.warnings:
        caption.append(f"\n⚠ {warning}", style="bold red")
    table = Table(title=f"edgeslim run '{report.run}'", caption=caption or None, caption_justify="left")
    for i, header in enumerate(table_data.headers):  # a narrow console wraps a 'slower' before a p50 interval
        table.add_column(header, justify="left" if i < 2 else "right", no_wrap=header == "p50 ms")
    for row in table_data.rows:
        table.add_row(*(Text(c.text, style=_STYLE.get(c.mark, "")) for c in row))
    return table


def _md_cell(cell: Cell) -> str:
    return f"**{cell.text}**" if cell.mark == SLOWER_MARK else cell.text


def render_markdown(report: RunReport) -> str:
    ref = report.reference()
    table_data = stage_table(report)
    lines = [f"# edgeslim run `{report.run}`", ""]
    lines.append(
        f"Created {report.created} on {report.device.get('cpu', '?')} "
        f"({report.device.get('logical_cores', '?')} logical cores)."
    )
    if ref and ref.metrics:
        lines.append(
            f"Every stage is measured the same way: accuracy with ONNX Runtime on the test split "
            f"({report.test_samples} samples); size = bytes of the deployable ONNX file; Δ acc and x smaller "
            f"are against `{ref.label}`."
        )
        if table_data.caption:
            lines += ["", table_data.caption[0].upper() + table_data.caption[1:]]
    lines += ["", "| " + " | ".join(table_data.headers) + " |", "|" + "---|" * len(table_data.headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table_data.rows]
    if table_data.warnings:
        lines.append("")
        lines += [f"> ⚠ {warning}  " for warning in table_data.warnings]
    for stage in report.stages:
        if stage.notes or stage.error:
            lines += ["", f"**{stage.label}**"]
            lines += [f"- {note}" for note in stage.notes]
            if stage.error:
                lines.append(f"- error: {stage.error}")
    lines += quant_report.markdown(report)
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
