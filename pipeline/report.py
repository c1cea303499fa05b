"""Run reports: ``report.json`` (machine-readable), ``report.md`` and the terminal table.

Ratios are taken against the ``baseline`` stage when the run has one, else the first
measured stage: "x smaller" = baseline size / stage size, "x faster" = baseline p50 / stage p50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from pipeline.artifacts import read_json, write_json, write_text
from pipeline.html_report import write_run_html

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def reference_stage(report: dict[str, Any]) -> dict[str, Any] | None:
    measured = [s for s in report["stages"] if s.get("metrics")]
    for stage in measured:
        if stage["name"] == "baseline":
            return stage
    return measured[0] if measured else None


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Rows: stage, status, accuracy, Δ accuracy, size, x smaller, params, p50, p99, x faster."""
    ref = reference_stage(report)
    rows = []
    for stage in report["stages"]:
        m = stage.get("metrics") or {}
        label = f"{stage['index']:02d}-{stage['name']}"
        if not m:
            rows.append([label, stage["status"]] + ["-"] * 8)
            continue
        acc, size, p50 = m["accuracy"], m["size_bytes"], m["latency_ms"]["p50"]
        rm = ref["metrics"] if ref else None
        rows.append(
            [
                label,
                stage["status"],
                f"{acc * 100:.2f}%",
                f"{(acc - rm['accuracy']) * 100:+.2f}" if rm else "-",
                _fmt_size(size),
                f"{rm['size_bytes'] / size:.1f}x" if rm else "-",
                f"{m['params']:,}" if m.get("params") is not None else "-",
                f"{p50:.3f}",
                f"{m['latency_ms']['p99']:.3f}",
                f"{rm['latency_ms']['p50'] / p50:.1f}x" if rm else "-",
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


def rich_table(report: dict[str, Any]) -> Table:
    ref = reference_stage(report)
    caption = (
        f"latency: ONNX Runtime, {ref['metrics']['threads']} thread(s), batch {ref['metrics']['batch_size']}; "
        f"ratios vs {ref['index']:02d}-{ref['name']}"
        if ref
        else None
    )
    table = Table(title=f"edgeslim run '{report['run']}'", caption=caption)
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i < 2 else "right")
    for row in table_rows(report):
        table.add_row(*row)
    return table


def render_markdown(report: dict[str, Any]) -> str:
    ref = reference_stage(report)
    lines = [f"# edgeslim run `{report['run']}`", ""]
    lines.append(
        f"Created {report['created']} on {report['device'].get('cpu', '?')} "
        f"({report['device'].get('logical_cores', '?')} logical cores)."
    )
    if ref:
        m = ref["metrics"]
        lines.append(
            f"Every stage is measured the same way: accuracy with ONNX Runtime on the test split "
            f"({report.get('test_samples', '?')} samples); size = bytes of the deployable ONNX file; latency = "
            f"ONNX Runtime CPU, {m['threads']} thread(s), batch {m['batch_size']}, median over "
            f"{m.get('latency_runs', '?')} runs after warm-up. Ratios are against `{ref['index']:02d}-{ref['name']}`."
        )
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    for stage in report["stages"]:
        if stage.get("notes") or stage.get("error"):
            lines += ["", f"**{stage['index']:02d}-{stage['name']}**"]
            lines += [f"- {note}" for note in stage.get("notes", [])]
            if stage.get("error"):
                lines.append(f"- error: {stage['error']}")
    lines += guard_section(report)
    lines += [
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(report["config"], sort_keys=False).rstrip(),
        "```",
    ]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in report["versions"].items()]
    return "\n".join(lines) + "\n"


def guard_section(report: dict[str, Any]) -> list[str]:
    """What each stage's accuracy guard measured and did, and the run-level verdict (validation split)."""
    rows = []
    for stage in report["stages"]:
        guard = stage.get("guard")
        if not guard:
            continue
        for attempt in guard["attempts"]:
            rows.append(
                f"| {stage['index']:02d}-{stage['name']} | {guard['reference_stage']} "
                f"{guard['reference_val_accuracy']:.2%} | {guard['max_accuracy_drop'] * 100:.2f} pt | "
                f"{attempt['setting']} | {attempt['val_accuracy']:.2%} | {attempt['drop'] * 100:+.2f} pt | "
                f"{'yes' if attempt['ok'] else 'no'} | {guard['action'] if attempt is guard['attempts'][-1] else ''} |"
            )
    run_guard = report.get("guard")
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
        verdict = "within budget" if run_guard["ok"] else f"over budget; deliverable: {run_guard['deliverable']}"
        lines += [
            "",
            f"Run guard: final model {run_guard['final_stage']} at {run_guard['final_val_accuracy']:.2%} vs baseline "
            f"{run_guard['baseline_val_accuracy']:.2%} (drop {run_guard['drop'] * 100:.2f} pt, budget "
            f"{run_guard['max_accuracy_drop'] * 100:.2f} pt): {verdict}.",
        ]
    return lines


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    write_json(run_dir / REPORT_JSON, report)
    write_text(run_dir / REPORT_MD, render_markdown(report))


def rerender(run_dir: Path) -> Path:
    """``edgeslim report``: rebuild report.md from report.json."""
    from pipeline.errors import UserError

    path = run_dir / REPORT_JSON
    if not path.is_file():
        raise UserError(f"no {REPORT_JSON} in {run_dir} (is it a run folder?)")
    try:
        report = read_json(path)
        text = render_markdown(report)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a valid edgeslim report ({type(exc).__name__}: {exc})") from None
    write_text(run_dir / REPORT_MD, text)
    write_run_html(run_dir)
    return run_dir / REPORT_MD
