"""One self-contained, offline HTML page for a comparison or a run.

Everything is inside the file: CSS inline, plots rendered by matplotlib's Agg canvas and embedded
as base64 PNG, and the numbers behind them as a JSON block (``#edgeslim-data``) so a script or a
person can check a bar against its value. No external URL is referenced: the page must open on an
air-gapped laptop or as a CI artifact.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeslim.engine.records import RunReport, read_report
from edgeslim.engine.store import write_text
from edgeslim.reports import quant_report
from edgeslim.reports.compare import (
    EMULATED_NOTE,
    FASTER,
    SLOWER,
    TABLE_HEADERS,
    Comparison,
    Entry,
    compare,
    load_entries,
    model_labels,
    op_table,
    pareto_front,
    row_cells,
)
from edgeslim.reports.stage_table import FASTER_MARK, REFERENCE_MARK, SLOWER_MARK, StageTable, stage_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RUN_HTML = "report.html"
DATA_ID = "edgeslim-data"
PLOT_LATENCY = "plot-latency"
PLOT_PARETO = "plot-pareto"
PLOT_SIZE = "plot-size"
PLOT_OPS = "plot-ops"
MAX_OPS_IN_PLOT = 8

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #1a1a1a; max-width: 1400px; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
td.device { white-space: normal; }
th:first-child, td:first-child, td.device, td.verdict { text-align: left; }
tr.baseline td, td.reference { background: #eef5ff; }
tr.emulated td { color: #666; font-style: italic; }
td.faster { color: #0a7a2f; font-weight: 600; } td.slower { color: #b00020; font-weight: 600; }
.warning { background: #fff4e5; border-left: 4px solid #f0a000; padding: 0.3rem 0.6rem; margin: 0.3rem 0; }
figure { margin: 1rem 0; } figcaption { font-size: 0.85rem; color: #444; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { font-size: 0.85rem; color: #444; }
"""


# --------------------------------------------------------------------------------------------- numbers


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity; a missing number is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pareto_by_device(comparison: Comparison) -> dict[str, list[Entry]]:
    """Per non-emulated device configuration: the entries on the (lower latency, higher accuracy) front."""
    groups: dict[str, list[Entry]] = {}
    for e in comparison.entries:
        if not e.emulated and e.accuracy is not None:
            groups.setdefault(e.device_label, []).append(e)
    return {
        label: [
            e for e, on_front in zip(group, pareto_front([(e.p50, e.accuracy) for e in group]), strict=True) if on_front
        ]
        for label, group in groups.items()
    }


def comparison_data(comparison: Comparison) -> dict[str, Any]:
    """The numbers behind every table cell and plot, for the page's JSON block."""
    front = {id(e) for entries in pareto_by_device(comparison).values() for e in entries}
    rows = []
    for row in comparison.rows:
        e = row.entry
        rows.append(
            {
                "model": e.model,
                "device": e.device,
                "threads": e.threads,
                "batch_size": e.batch_size,
                "device_label": e.device_label,
                "emulated": e.emulated,
                "size_bytes": e.size_bytes,
                "p10": e.quantile(10),
                "p50": e.p50,
                "p90": e.p90,
                "p99": e.p99,
                "samples": int(e.samples.size) if e.samples is not None else 0,
                "accuracy": e.accuracy,
                "speedup": row.speedup,
                "ci_low": row.ci[0] if row.ci else None,
                "ci_high": row.ci[1] if row.ci else None,
                "delta_accuracy_pt": row.delta_accuracy_pt,
                "verdict": row.verdict,
                "pareto": None if e.emulated or e.accuracy is None else id(e) in front,
                "sha256": e.sha256,
                "input_shape": list(e.input_shape) if e.input_shape else None,
                "cpu": e.cpu,
                "onnxruntime": e.onnxruntime,
                "source": e.source,
            }
        )
    return {
        "schema": "edgeslim.compare/1",
        "baseline": comparison.baseline,
        "min_effect": comparison.min_effect,
        "confidence": comparison.confidence,
        "resamples": comparison.resamples,
        "noise_rule": comparison.noise_rule,
        "rows": [{k: _finite(v) for k, v in r.items()} for r in rows],
        "sizes": _model_sizes(comparison),
        "pareto": {label: [e.model for e in es] for label, es in pareto_by_device(comparison).items()},
        "op_profiles": [
            {"model": e.model, "device_label": e.device_label, "ops": e.op_profile} for e in comparison.profiled
        ],
        "warnings": comparison.warnings,
    }


def _model_sizes(comparison: Comparison) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for e in comparison.entries:
        if e.size_bytes is not None:
            sizes.setdefault(e.model, int(e.size_bytes))
    return sizes


# --------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas directly: no pyplot, no global backend switch, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_base64(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _colors(labels: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def plot_latency(comparison: Comparison) -> str:
    """Grouped bars: p50 per model per device configuration; error bars p10..p90 of the samples."""
    models = model_labels(comparison.entries)
    colors = _colors(models)
    groups = list(dict.fromkeys(e.device_label for e in comparison.entries))
    by_cell = {(e.device_label, e.model): e for e in comparison.entries}
    fig = _figure(max(6.0, 1.2 + len(groups) * max(1.6, 0.35 * len(models))), 4.8)
    ax = fig.add_subplot()
    width = 0.8 / len(models)
    for m_index, model in enumerate(models):
        xs, heights, low, high = [], [], [], []
        hatches = []
        for g_index, group in enumerate(groups):
            e = by_cell.get((group, model))
            if e is None:
                continue
            p10, p90 = e.quantile(10), e.quantile(90)
            xs.append(g_index - 0.4 + width * (m_index + 0.5))
            heights.append(e.p50)
            low.append(max(0.0, e.p50 - p10) if p10 is not None else 0.0)
            high.append(max(0.0, (p90 if p90 is not None else e.p90) - e.p50))
            hatches.append("//" if e.emulated else "")
        if not xs:
            continue
        bars = ax.bar(xs, heights, width * 0.95, yerr=[low, high], capsize=3, color=colors[model], label=model)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([_wrap(g) for g in groups], fontsize=8)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(
        "p50 latency per model and device\n(error bars: p10–p90 of the samples; hatched: emulated)", fontsize=10
    )
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return _png_base64(fig)


def plot_pareto(comparison: Comparison, fronts: dict[str, list[Entry]]) -> str:
    """Accuracy vs p50 per (non-emulated) device configuration, the Pareto front joined and ringed."""
    colors = _colors(model_labels(comparison.entries))
    groups = {label: [] for label in fronts}
    for e in comparison.entries:
        if e.device_label in groups:
            groups[e.device_label].append(e)
    n = len(groups)
    columns = min(n, 3)
    rows = math.ceil(n / columns)
    fig = _figure(5.0 * columns, 4.2 * rows)
    for i, (label, group) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, columns, i + 1)
        on_front = {id(e) for e in fronts[label]}
        for e in group:
            ax.scatter(e.p50, e.accuracy * 100, s=60, color=colors[e.model], zorder=3, label=e.model)
            if id(e) in on_front:
                ax.scatter(e.p50, e.accuracy * 100, s=220, facecolors="none", edgecolors="black", zorder=4)
            ax.annotate(e.model, (e.p50, e.accuracy * 100), fontsize=7, xytext=(4, 4), textcoords="offset points")
        front = sorted(fronts[label], key=lambda e: e.p50)
        ax.plot([e.p50 for e in front], [e.accuracy * 100 for e in front], "k--", lw=1, zorder=2, label="Pareto front")
        ax.set_title(_wrap(label, 60), fontsize=9)
        ax.set_xlabel("p50 latency (ms), lower is better")
        ax.set_ylabel("accuracy (%), higher is better")
        ax.grid(alpha=0.3)
    return _png_base64(fig)


def plot_sizes(comparison: Comparison) -> str:
    sizes = _model_sizes(comparison)
    colors = _colors(model_labels(comparison.entries))
    labels = list(sizes)
    fig = _figure(8.0, 1.2 + 0.35 * len(labels))
    ax = fig.add_subplot()
    values = [sizes[m] / 1024 for m in labels]
    ax.barh(range(len(labels)), values, color=[colors[m] for m in labels])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    for y, value in enumerate(values):
        ax.annotate(f"{value:,.1f} KB", (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("model file size (KB)")
    ax.set_title("size per model")
    ax.grid(axis="x", alpha=0.3)
    return _png_base64(fig)


def plot_ops(comparison: Comparison) -> str:
    """Stacked bars of mean ms per run by op type (the largest op types, the rest as 'other')."""
    from matplotlib import colormaps

    profiled = comparison.profiled
    totals: dict[str, float] = {}
    for e in profiled:
        for op, t in (e.op_profile or {}).items():
            totals[op] = totals.get(op, 0.0) + float(t["mean_ms_per_run"])
    top = sorted(totals, key=lambda op: -totals[op])[:MAX_OPS_IN_PLOT]
    shown = [*top, "other"] if len(totals) > len(top) else top
    cmap = colormaps["tab20"]
    labels = [f"{e.model} @ {e.device_label}" for e in profiled]
    fig = _figure(10.0, 1.4 + 0.45 * len(labels))
    ax = fig.add_subplot()
    left = [0.0] * len(profiled)
    for i, op in enumerate(shown):
        widths = []
        for e in profiled:
            ops = e.op_profile or {}
            if op == "other":
                widths.append(sum(float(t["mean_ms_per_run"]) for name, t in ops.items() if name not in top))
            else:
                widths.append(float(ops[op]["mean_ms_per_run"]) if op in ops else 0.0)
        ax.barh(range(len(profiled)), widths, left=left, color=cmap(i % cmap.N), label=op)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(range(len(profiled)))
    ax.set_yticklabels([_wrap(label, 60) for label in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("mean ms per run")
    ax.set_title("time per op type (ONNX Runtime profiler)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="x", alpha=0.3)
    return _png_base64(fig)


# --------------------------------------------------------------------------------------------- page


def _img(plot_id: str, alt: str, png: str, caption: str) -> str:
    return (
        f'<figure><img id="{plot_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, cells in enumerate(rows):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _comparison_table(comparison: Comparison) -> str:
    headers = [comparison.ci_header if h == "CI" else h for h in TABLE_HEADERS]
    rows, classes = [], []
    for row in comparison.rows:
        cells = row_cells(row)
        verdict_class = {FASTER: "faster", SLOWER: "slower"}.get(row.verdict, "")
        tds = [f"<td>{html.escape(c)}</td>" for c in cells]
        tds[1] = f'<td class="device">{html.escape(cells[1])}</td>'
        tds[-1] = f'<td class="verdict {verdict_class}">{html.escape(cells[-1])}</td>'
        rows.append(tds)
        css = []
        if row.entry.model == comparison.baseline:
            css.append("baseline")
        if row.entry.emulated:
            css.append("emulated")
        classes.append(" ".join(css))
    return _table(headers, rows, classes)


def _json_block(data: dict[str, Any]) -> str:
    text = json.dumps(data, allow_nan=False, default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="{DATA_ID}">{text}</script>'


_MARK_CLASS = {FASTER_MARK: "faster", SLOWER_MARK: "slower", REFERENCE_MARK: "reference"}


def _td(text: str, css: str = "") -> str:
    return f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>"


def stage_section(table: StageTable) -> str:
    """A run's main table (every stage timed side by side with the previous one and the baseline),
    its caption, and a warning per stage that got slower than the one before it."""
    rows = [[_td(c.text, _MARK_CLASS.get(c.mark, "")) for c in row] for row in table.rows]
    parts = ["<h2>Stages</h2>", _table(table.headers, rows)]
    if table.caption:
        parts.append(f'<p class="note">{html.escape(table.caption)}</p>')
    parts += [f'<p class="warning">⚠ {html.escape(w)}</p>' for w in table.warnings]
    return "\n".join(parts)


def quant_sections(run: RunReport) -> str:
    """INT8 coverage, the parity ledger and per-layer SQNR (``edgeslim.reports.quant_report``)."""
    parts = []
    for title, intro, content in quant_report.sections(run):
        parts += [f"<h2>{html.escape(title)}</h2>", f'<p class="note">{html.escape(intro)}</p>']
        if isinstance(content, tuple):
            headers, rows = content
            parts.append(_table(headers, [[_td(c) for c in row] for row in rows]))
        else:
            parts.append("<ul>" + "".join(f"<li>{html.escape(f'{a}: {b}')}</li>" for a, b in content) + "</ul>")
    return "\n" + "\n".join(parts) if parts else ""


def render(comparison: Comparison, title: str = "edgeslim compare", intro: str = "") -> str:
    """The whole page as one string: table, warnings, plots, per-op table, noise rule and the data block.
    ``intro``: HTML placed under the title (a run's stage table)."""
    fronts = pareto_by_device(comparison)
    data = comparison_data(comparison)
    parts = [f"<h1>{html.escape(title)}</h1>", *([intro] if intro else [])]
    parts.append(
        f"<p>Baseline: <code>{html.escape(comparison.baseline)}</code>. Speed-up = baseline p50 / p50 on the "
        f"same device, thread count and batch size.</p>"
    )
    emulated = sorted({e.device for e in comparison.entries if e.emulated})
    if emulated:
        parts.append(f'<p class="warning">{html.escape(", ".join(emulated))}: {EMULATED_NOTE}.</p>')
    if comparison.warnings:
        parts.append("<h2>Warnings</h2>")
        parts += [f'<p class="warning">⚠ {html.escape(w)}</p>' for w in comparison.warnings]
    parts += ["<h2>Comparison</h2>", _comparison_table(comparison)]
    parts.append("<h2>Plots</h2>")
    parts.append(
        _img(
            PLOT_LATENCY,
            "p50 latency per model per device",
            plot_latency(comparison),
            "p50 latency per model and device; error bars from the p10 to the p90 of the raw samples (upper bar "
            f"only, to the reported p90, where samples are missing). Hatched bars: {EMULATED_NOTE}.",
        )
    )
    if fronts:
        excluded = " Emulated devices are left out (their latency is not representative)." if emulated else ""
        parts.append(
            _img(
                PLOT_PARETO,
                "accuracy vs p50 latency with the Pareto front, per device",
                plot_pareto(comparison, fronts),
                "Accuracy against p50 latency per device configuration; ringed points joined by the dashed line "
                "are the Pareto front (no other model is both faster and more accurate)." + excluded,
            )
        )
    else:
        parts.append('<p class="note">No accuracy in these reports: no accuracy/latency plot.</p>')
    if data["sizes"]:
        parts.append(_img(PLOT_SIZE, "model file size per model", plot_sizes(comparison), "Model file size."))
    if comparison.profiled:
        parts.append(
            _img(
                PLOT_OPS,
                "time per op type per model and device",
                plot_ops(comparison),
                f"Mean ms per run by op type (ONNX Runtime profiler; the {MAX_OPS_IN_PLOT} largest, the rest as "
                "'other').",
            )
        )
        headers, rows = op_table(comparison)
        parts += [
            "<h2>Per-op time</h2>",
            _table(headers, [[f"<td>{html.escape(c)}</td>" for c in cells] for cells in rows]),
        ]
    else:
        parts.append('<p class="note">No per-op profiles in these reports.</p>')
    parts += ["<h2>How to read the verdicts</h2>", f'<p class="note">{html.escape(comparison.noise_rule)}</p>']
    parts.append(_json_block(data))
    return _page(title, "\n".join(parts))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_html(comparison: Comparison, path: Path, title: str = "edgeslim compare", intro: str = "") -> Path:
    """Render and write atomically (a reader never sees half a page)."""
    path = Path(path)
    write_text(path, render(comparison, title, intro))
    return path


def write_run_html(run_dir: Path) -> Path:
    """``run_dir/report.html`` for one run: the stage table (as in report.md), then every measured
    model and device profile compared with the ``baseline`` stage.

    Called by the runner after every run, so it never fails on failed or unmeasured stages (they are
    skipped) nor on a broken benchmark report (named in the page's warnings).
    """
    run_dir = Path(run_dir)
    problems: list[str] = []
    entries = load_entries([run_dir], problems)
    title = f"edgeslim run '{entries[0].context.get('run') if entries else run_dir.name}'"
    try:
        run = read_report(run_dir)
        intro = stage_section(stage_table(run)) + quant_sections(run)
    except (OSError, ValueError):  # a report.json this edgeslim cannot read as a run: the comparison still shows
        intro = ""
    if not entries:
        notes = "".join(f'<p class="warning">⚠ {html.escape(p)}</p>' for p in problems)
        body = f"<h1>{html.escape(title)}</h1><p>No measured stages yet.</p>{notes}"
        return _write(run_dir / RUN_HTML, _page(title, body))
    if intro:
        intro += (
            "\n<p class=\"note\">The comparison below pairs each model's own measurement with the baseline's own "
            "measurement (timed at different moments, and per device profile); the stage table above times every "
            "stage side by side with the previous stage and the baseline, so a busy moment slows them alike.</p>"
        )
    return write_html(compare(entries, extra_warnings=problems), run_dir / RUN_HTML, title, intro)


def _write(path: Path, text: str) -> Path:
    write_text(path, text)
    return path
