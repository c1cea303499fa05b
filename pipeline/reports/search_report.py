"""A search's reports: ``search.json`` (the summary), ``search.md`` (every trial: settings, objectives,
state; the front; parameter importances) and ``search.html`` (the same, with the Pareto front drawn:
accuracy against latency, marker area = model bytes, each point a link to its trial's run folder)."""

from __future__ import annotations

import html
import io
from pathlib import Path

from edgeslim.engine.store import write_json, write_text
from edgeslim.study.front import SEARCH_JSON, SearchSummary, TrialSummary

SEARCH_MD = "search.md"
SEARCH_HTML = "search.html"


def write_search_reports(search_dir: Path, summary: SearchSummary) -> None:
    write_json(search_dir / SEARCH_JSON, summary.model_dump(mode="json"))
    write_text(search_dir / SEARCH_MD, to_markdown(summary))
    write_text(search_dir / SEARCH_HTML, to_html(summary))


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _row(t: TrialSummary, front: set[int]) -> list[str]:
    params = ", ".join(f"{k.removeprefix('stages.')}={_fmt(v)}" for k, v in t.params.items())
    accuracy = "–" if t.accuracy is None else f"{t.accuracy * 100:.2f}%"
    test = "–" if t.test_accuracy is None else f"{t.test_accuracy * 100:.2f}%"
    size = "–" if t.size_bytes is None else f"{t.size_bytes / 1024:.1f} KB"
    state = t.state + (" ★" if t.number in front else "") + ("" if t.feasible is not False else " (infeasible)")
    state += " (default)" if t.default else ""
    state += " (initial)" if t.initial else ""
    state += f" (repeat of {t.repeat_of})" if t.repeat_of is not None else ""
    note = t.error or (f"pruned at {t.pruned_at}" if t.pruned_at else "")
    return [str(t.number), state, params, accuracy, test, _fmt(t.latency_ms), size, t.run_dir or "", note]


HEADER = ["trial", "state", "settings", "val accuracy", "test accuracy", "p50 ms", "size", "run folder", "note"]


def to_markdown(summary: SearchSummary) -> str:
    front = set(summary.front)
    lines = [
        f"# Search {summary.name}",
        "",
        f"Sampler **{summary.sampler}**; objectives "
        + ", ".join(f"{k} ({v})" for k, v in summary.objectives.items())
        + (f"; constraints {summary.constraints}" if summary.constraints else "")
        + f". {len(summary.trials)} trials, "
        + ", ".join(f"{sum(t.state == s for t in summary.trials)} {s}" for s in _states(summary))
        + ". ★ = on the Pareto front (complete, feasible, not dominated). Accuracy is the validation split's "
        "(what the search optimizes); p50 is the final model on the host profile.",
        "",
        _default_line(summary),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for t in summary.trials:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _row(t, front)) + " |")
    lines += ["", "## Parameter importances (Optuna, fANOVA)", ""]
    if summary.importances:
        for objective, values in summary.importances.items():
            ranked = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
            lines.append(f"- {objective}: {ranked}")
    else:
        lines.append(f"- {summary.importance_note or 'not computed'}")
    return "\n".join(lines) + "\n"


def _default_line(summary: SearchSummary) -> str:
    if summary.default_trial is None:
        return "No default trial (the config does not set every searched key inside the space)."
    if not summary.beat_default:
        return f"The config's own settings are trial {summary.default_trial}; no trial dominates it."
    return (
        f"The config's own settings are trial {summary.default_trial}; trials dominating it: "
        + ", ".join(str(n) for n in summary.beat_default)
        + "."
    )


def _states(summary: SearchSummary) -> list[str]:
    return sorted({t.state for t in summary.trials})


def front_svg(summary: SearchSummary) -> str | None:
    """Accuracy vs p50 latency of every complete trial (front highlighted), each point a link."""
    points = [t for t in summary.trials if t.state == "complete" and t.accuracy is not None and t.latency_ms]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = max(t.size_bytes or 1 for t in points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = set(summary.front)
    for t in points:
        on_front = t.number in front
        dot = ax.scatter(
            [t.latency_ms],
            [t.accuracy * 100],  # type: ignore[operator]
            s=40 + 400 * (t.size_bytes or 0) / largest,
            c="tab:orange" if on_front else "tab:blue",
            alpha=0.85 if on_front else 0.45,
            edgecolors="black" if on_front else "none",
        )
        if t.run_dir:
            dot.set_urls([f"{t.run_dir}/report.html"])
        ax.annotate(
            str(t.number), (t.latency_ms, t.accuracy * 100), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )  # type: ignore[arg-type, operator]
    line = sorted((t for t in points if t.number in front), key=lambda t: t.latency_ms)  # type: ignore[arg-type, return-value]
    if len(line) > 1:
        ax.plot([t.latency_ms for t in line], [t.accuracy * 100 for t in line], color="tab:orange", lw=1)  # type: ignore[operator]
    ax.set_xlabel("p50 latency (ms, host profile)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Trials (orange: Pareto front; marker area: model bytes; click: trial report)")
    ax.grid(alpha=0.3)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def to_html(summary: SearchSummary) -> str:
    front = set(summary.front)
    rows = []
    for t in summary.trials:
        cells = _row(t, front)
        if t.run_dir:
            link = f'<a href="{html.escape(t.run_dir)}/report.html">{html.escape(t.run_dir)}</a>'
            cells_html = [html.escape(c) for c in cells[:7]] + [link, html.escape(cells[8])]
        else:
            cells_html = [html.escape(c) for c in cells]
        style = ' class="front"' if t.number in front else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells_html) + "</tr>")
    svg = front_svg(summary) or "<p>No complete trial with a latency yet.</p>"
    importances = (
        "".join(
            f"<li>{html.escape(obj)}: " + ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in values.items()) + "</li>"
            for obj, values in summary.importances.items()
        )
        or f"<li>{html.escape(summary.importance_note or 'not computed')}</li>"
    )
    body = " ".join(to_markdown(summary).split("\n")[2:5])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeslim search {html.escape(summary.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}tr.front{{background:#fff3e0}}</style></head>
<body><h1>Search {html.escape(summary.name)}</h1><p>{html.escape(body.replace("**", ""))}</p>
<h2>Pareto front</h2>{svg}
<h2>Trials</h2><table><tr>{"".join(f"<th>{h}</th>" for h in HEADER)}</tr>{"".join(rows)}</table>
<h2>Parameter importances (Optuna, fANOVA)</h2><ul>{importances}</ul></body></html>
"""
