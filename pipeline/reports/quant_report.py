"""The quantization facts of a run, as tables for report.md and report.html: where the outputs move
between PyTorch and the device (the parity ledger), what ONNX Runtime really runs in integer
kernels (INT8 coverage), and which layers lose the most signal (per-layer SQNR).

Each comes from the stages' own details (``parity_ledger``, ``int8_coverage``, ``layer_sqnr``), so
the reports show what the stages measured and never recompute anything.
"""

from __future__ import annotations

from typing import Any

from edgeslim.engine.records import RunReport

Table = tuple[list[str], list[list[str]]]  # headers, rows of cell texts

LEDGER_HEADERS = ["stage", "hop", "split", "samples", "top-1 agreement", "max abs diff", "gate", "first diverging node"]
SQNR_HEADERS = ["stage", "node", "op", "output SQNR (dB)", "SQNR lost in the node (dB)"]
SQNR_ROWS = 10


def parity_ledger(report: RunReport) -> Table:
    """Every hop the stages compared, in run order: PyTorch -> ONNX -> INT8 at ONNX Runtime's
    optimization levels -> .ort -> emulated arm64."""
    rows = []
    for stage in report.stages:
        for hop in stage.details.get("parity_ledger", []):
            gate = hop.get("gate")
            verdict = "" if gate is None else f"{gate:.2%} {'passed' if hop.get('passed', True) else 'FAILED'}"
            rows.append(
                [
                    stage.label,
                    hop["hop"],
                    hop.get("split", ""),
                    str(hop.get("samples", "")),
                    f"{hop['top1_agreement']:.2%}",
                    f"{hop['max_abs_diff']:.3g}",
                    verdict,
                    hop.get("first_divergent_node") or "",
                ]
            )
    return LEDGER_HEADERS, rows


def coverage_lines(report: RunReport) -> list[tuple[str, str]]:
    """(stage label, INT8 coverage summary) for each stage that read the graph ONNX Runtime executes."""
    return [
        (s.label, s.details["int8_coverage"]["summary"])
        for s in report.stages
        if isinstance(s.details.get("int8_coverage"), dict) and "summary" in s.details["int8_coverage"]
    ]


def sqnr_table(report: RunReport, limit: int = SQNR_ROWS) -> Table:
    """The ``limit`` quantized nodes that lose the most signal, per stage (calibration samples)."""
    rows = []
    for stage in report.stages:
        for r in stage.details.get("layer_sqnr", [])[:limit]:
            rows.append([stage.label, r["node"], r["op_type"], _db(r.get("sqnr_db")), _db(r.get("sqnr_drop_db"))])
    return SQNR_HEADERS, rows


def _db(value: float | None) -> str:
    """A dB figure; None (not measured, or an exact output: infinite SQNR, stored as null) is blank."""
    return "" if value is None else f"{value:.1f}"


def sections(report: RunReport) -> list[tuple[str, str, Any]]:
    """(title, intro, content) for report.md and report.html, only those with something to show:
    content is a list of (stage label, summary) lines or a Table."""
    out: list[tuple[str, str, Any]] = []
    coverage = coverage_lines(report)
    if coverage:
        out.append(("INT8 coverage", "In the graph ONNX Runtime executes on the host profile.", coverage))
    ledger = parity_ledger(report)
    if ledger[1]:
        out.append(
            (
                "Parity ledger",
                "Top-1 agreement and output differences at each hop from PyTorch to the device; a gated hop "
                "that fails names the first ONNX node whose outputs diverge.",
                ledger,
            )
        )
    sqnr = sqnr_table(report)
    if sqnr[1]:
        out.append(
            (
                "Per-layer quantization noise",
                f"Output SQNR of each quantized node against the float model on calibration samples, the "
                f"{SQNR_ROWS} that lose the most signal first.",
                sqnr,
            )
        )
    return out


def markdown(report: RunReport) -> list[str]:
    """The report.md sections (none when the run quantized nothing and compared no hops)."""
    lines: list[str] = []
    for title, intro, content in sections(report):
        lines += ["", f"## {title}", "", intro, ""]
        if isinstance(content, tuple):
            headers, rows = content
            lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        else:
            lines += [f"- {label}: {summary}" for label, summary in content]
    return lines
