"""``edgeslim compare``: line up latency reports and run folders, and say which differences are real.

Everything is flattened into :class:`Entry` objects (one model measured on one device at one
thread count and batch size). Each entry is compared with the baseline model measured on the
same device, thread count and batch size: speed-up = baseline p50 / p50. Whether a speed-up is
real or noise is decided by a seeded bootstrap of the ratio of medians (see :data:`NOISE_RULE`),
because two medians of a few hundred timings differ by a percent or two even for the same model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from edgeslim.devices.latency_report import LatencyReport, Measurement, load_report, validate_report
from edgeslim.engine.records import REPORT_JSON
from edgeslim.engine.stats import (  # the statistics live with the engine, which times stages side by side
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_EFFECT,
    FASTER,
    MIN_SAMPLES,
    RESAMPLES,
    SLOWER,
    TOO_FEW_SAMPLES,
    WITHIN_NOISE,
    noise_verdict,
    speedup_interval,
)
from edgeslim.engine.store import stage_label
from edgeslim.errors import UserError

EMULATED_NOTE = "emulated — latency not representative"
BASELINE = "baseline"
NO_SAMPLES = "no samples"
NO_BASELINE = "no baseline here"

NOISE_RULE = (
    "Noise rule: every model is compared with the baseline measured on the same device, thread count and "
    "batch size. Speed-up = baseline p50 / p50. A {confidence} confidence interval of the ratio of "
    "medians comes from a seeded bootstrap ({resamples:,} resamples of each set of latency samples). "
    "A model is 'faster' only when the whole interval lies above 1 + min-effect ({min_effect}), "
    "'slower (regression)' only when it lies below 1 - min-effect; otherwise the difference is "
    "'within noise'. Without raw samples (older reports) no test is possible: 'no samples' "
    "(fewer than {min_samples}: 'too few samples')."
)


def percent(fraction: float) -> str:
    """0.95 -> '95%', 0.025 -> '2.5%' (no rounding that would hide the setting)."""
    return f"{fraction * 100:.4g}%"


def noise_rule(confidence: float, min_effect: float, resamples: int = RESAMPLES) -> str:
    return NOISE_RULE.format(
        confidence=percent(confidence), min_effect=percent(min_effect), resamples=resamples, min_samples=MIN_SAMPLES
    )


@dataclass
class Entry:
    """One model measured on one device configuration: the unit every table row and plot point is."""

    model: str
    device: str
    threads: int
    batch_size: int
    p50: float
    p90: float
    p99: float
    size_bytes: int | None = None
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)
    accuracy: float | None = None
    sha256: str | None = None
    input_shape: tuple[int, ...] | None = None
    emulated: bool = False
    device_kind: str = "host"
    cpu: str | None = None
    onnxruntime: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    op_profile: dict[str, dict[str, float]] | None = None
    source: str = ""  # the file the numbers were read from
    origin: str = ""  # the argument it came from (a report file or a run folder), to tell same labels apart
    stage: str | None = None  # the run stage's name when the entry comes from a run folder
    reference: bool = False  # the run's reference stage (role "reference", the baseline)
    given_label: str = ""  # the label before duplicates were told apart, to spot one label naming two files

    def __post_init__(self) -> None:
        self.given_label = self.given_label or self.model
        self.origin = self.origin or self.source

    @property
    def config_key(self) -> tuple[str, int, int]:
        """What has to match for two latencies to be comparable."""
        return (self.device, self.threads, self.batch_size)

    @property
    def device_label(self) -> str:
        label = f"{self.device} · {self.threads} thread{'s' if self.threads != 1 else ''} · batch {self.batch_size}"
        return f"{label} · {EMULATED_NOTE}" if self.emulated else label

    def quantile(self, q: float) -> float | None:
        """A latency percentile from the raw samples (None without them)."""
        return float(np.percentile(self.samples, q)) if self.samples is not None and self.samples.size else None


@dataclass
class Row:
    """An entry next to the baseline on the same device configuration."""

    entry: Entry
    baseline: Entry | None
    speedup: float | None
    ci: tuple[float, float] | None
    delta_accuracy_pt: float | None
    verdict: str


@dataclass
class Comparison:
    entries: list[Entry]
    baseline: str
    rows: list[Row]
    warnings: list[str]
    min_effect: float
    confidence: float
    resamples: int = RESAMPLES

    @property
    def noise_rule(self) -> str:
        return noise_rule(self.confidence, self.min_effect, self.resamples)

    @property
    def ci_header(self) -> str:
        return f"{percent(self.confidence)} CI"

    @property
    def profiled(self) -> list[Entry]:
        return [e for e in self.entries if e.op_profile]


# --------------------------------------------------------------------------------------------- loading


def _samples(values: Sequence[float] | None) -> np.ndarray | None:
    if not values:
        return None
    return np.asarray(values, dtype=np.float64)


def _shape(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return tuple(int(v) for v in values) if values else None


def _op_profile(raw: dict[str, Any] | None) -> dict[str, dict[str, float]] | None:
    if not raw:
        return None
    return {
        op: (times.model_dump() if hasattr(times, "model_dump") else dict(times))
        for op, times in raw.items()  # type: ignore[union-attr]
    }


def _accuracy(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def entries_from_report(report: LatencyReport, source: str, label: str | None = None) -> list[Entry]:
    """One entry per measurement of a validated latency report."""
    accuracy = _accuracy(report.context.get("accuracy"))
    return [_entry_from_measurement(m, report, label or report.model.label, accuracy, source) for m in report.results]


def _entry_from_measurement(
    m: Measurement, report: LatencyReport, label: str, accuracy: float | None, source: str
) -> Entry:
    lat = m.latency_ms
    return Entry(
        model=label,
        device=report.device.profile,
        threads=m.threads,
        batch_size=m.batch_size,
        p50=lat.p50,
        p90=lat.p90,
        p99=lat.p99,
        size_bytes=report.model.size_bytes,
        samples=_samples(m.samples_ms),
        accuracy=accuracy,
        sha256=report.model.sha256,
        input_shape=_shape(m.input_shape),
        emulated=report.device.emulated,
        device_kind=report.device.kind,
        cpu=report.device.cpu,
        onnxruntime=report.device.onnxruntime,
        context=dict(report.context),
        op_profile=_op_profile(m.op_profile),
        source=source,
    )


def _host_profile_name(run: dict[str, Any]) -> str:
    """The name stage metrics are measured under (the run's host profile)."""
    profile = run.get("device_profile")
    if isinstance(profile, dict):
        if isinstance(profile.get("name"), str) and profile.get("kind", "host") == "host":
            return profile["name"]
        for candidate in profile.get("profiles") or []:
            if isinstance(candidate, dict) and candidate.get("kind", "host") == "host" and candidate.get("name"):
                return str(candidate["name"])
    return "host"


def _stage_entry(run: dict[str, Any], stage: dict[str, Any], label: str, source: str) -> Entry:
    m = stage["metrics"]
    lat = m["latency_ms"]
    device = run.get("device") or {}
    return Entry(
        model=label,
        device=_host_profile_name(run),
        threads=int(m.get("threads") or 1),
        batch_size=int(m.get("batch_size") or 1),
        p50=float(lat["p50"]),
        p90=float(lat.get("p90", lat["p50"])),
        p99=float(lat.get("p99", lat.get("p90", lat["p50"]))),
        size_bytes=m.get("size_bytes"),
        samples=_samples(m.get("latency_samples_ms")),
        accuracy=_accuracy(m.get("accuracy")),
        sha256=m.get("model_sha256"),
        input_shape=_shape(m.get("input_shape")),
        emulated=False,
        device_kind="host",
        cpu=device.get("cpu"),
        onnxruntime=device.get("onnxruntime") or (run.get("versions") or {}).get("onnxruntime"),
        context={"run": run.get("run"), "stage": stage.get("name"), "config_hash": run.get("config_hash")},
        op_profile=_op_profile(m.get("op_profile")),
        source=source,
        stage=stage.get("name"),
        reference=is_reference(stage),
    )


def is_reference(stage: dict[str, Any]) -> bool:
    """The stage every ratio is taken against; reports written before stages had roles name it ``baseline``."""
    role = stage.get("role")
    return role == "reference" if role is not None else stage.get("name") == "baseline"


def _problem(problems: list[str] | None, message: str) -> None:
    """Inside a run folder, a broken piece is skipped and reported when the caller collects problems."""
    if problems is None:
        raise UserError(message)
    problems.append(message)


def entries_from_run(run_dir: Path, run: dict[str, Any], problems: list[str] | None = None) -> list[Entry]:
    """Every measured stage of a run, plus the benchmark stage's per-device-profile reports.

    Failed and unmeasured stages are skipped. A benchmark report for the same model, device, threads
    and batch as the stage's own measurement replaces it (it has more samples and maybe op profiles).
    """
    if not isinstance(run.get("stages"), list):
        raise UserError(f"{run_dir / REPORT_JSON}: not an edgeslim run report (no 'stages' list)")
    name = str(run.get("run") or run_dir.name)
    entries: list[Entry] = []
    for stage in run["stages"]:
        if not isinstance(stage, dict) or "index" not in stage or "name" not in stage:
            continue
        folder = stage_label(int(stage["index"]), str(stage["name"]))
        label = f"{name}/{folder}"
        metrics = stage.get("metrics")
        if isinstance(metrics, dict) and isinstance(metrics.get("latency_ms"), dict):
            try:
                entries.append(_stage_entry(run, stage, label, str(run_dir)))
            except (KeyError, TypeError, ValueError) as exc:
                _problem(problems, f"{run_dir}: stage {label}: unreadable metrics ({type(exc).__name__}: {exc})")
        reports = (stage.get("details") or {}).get("reports") if isinstance(stage.get("details"), dict) else None
        if not isinstance(reports, dict):
            continue
        stage_accuracy = _accuracy(metrics.get("accuracy")) if isinstance(metrics, dict) else None
        for profile, file_name in reports.items():
            path = run_dir / str(stage.get("dir") or folder) / str(file_name)
            try:
                report = load_report(path)
            except UserError as exc:
                _problem(problems, f"{label}: device profile '{profile}' skipped: {exc}")
                continue
            for entry in entries_from_report(report, str(path), label):
                entry.stage = str(stage["name"])
                entry.reference = is_reference(stage)
                entry.origin = str(run_dir)
                entry.context.setdefault("run", name)
                if entry.accuracy is None:
                    entry.accuracy = stage_accuracy  # the same model the stage measured
                entries = [e for e in entries if (e.model, e.config_key) != (entry.model, entry.config_key)]
                entries.append(entry)
    return entries


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file or folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read JSON: {exc}") from None


def _is_run_report(raw: Any) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("stages"), list) and "run" in raw and "schema" not in raw


def load_source(path: Path, problems: list[str] | None = None) -> list[Entry]:
    """Entries of one command-line argument: a latency report, a run folder, or a run's report.json."""
    path = Path(path)
    if path.is_dir():
        if not (path / REPORT_JSON).is_file():
            raise UserError(f"{path}: a folder without {REPORT_JSON} (not an edgeslim run folder)")
        raw = _read_json(path / REPORT_JSON)
        if not _is_run_report(raw):
            raise UserError(f"{path / REPORT_JSON}: not an edgeslim run report (no 'run' and 'stages')")
        return entries_from_run(path, raw, problems)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    raw = _read_json(path)
    if _is_run_report(raw):
        return entries_from_run(path.parent, raw, problems)
    return entries_from_report(validate_report(raw, str(path)), str(path))


def _disambiguate(entries: list[Entry]) -> None:
    """Two inputs with the same model label on the same device configuration: add the file (or run folder)
    name, or the whole path where the names are the same too. The same label on different devices is one
    model measured twice, and keeps its label."""
    by_key: dict[tuple[str, tuple[str, int, int]], set[str]] = {}
    for e in entries:
        by_key.setdefault((e.model, e.config_key), set()).add(e.origin)
    clashing = {model for (model, _), origins in by_key.items() if len(origins) > 1}
    for model in clashing:
        group = [e for e in entries if e.model == model]
        names = {e.origin: Path(e.origin).name or e.origin for e in group}
        if len(set(names.values())) < len(names):
            names = {origin: origin for origin in names}
        for e in group:
            e.model = f"{model} ({names[e.origin]})"


def load_entries(paths: Iterable[Path], problems: list[str] | None = None) -> list[Entry]:
    """All arguments flattened into entries, labels made unique per device configuration.

    ``problems``: when given, broken pieces inside run folders are skipped and described there
    instead of raising; a bad argument itself always raises :class:`UserError`.
    """
    entries: list[Entry] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.resolve() in seen:  # the same file twice would only duplicate every row
            continue
        seen.add(path.resolve())
        entries.extend(load_source(path, problems))
    _disambiguate(entries)
    return entries


# --------------------------------------------------------------------------------------------- statistics


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (latency, accuracy) points no other point beats: lower-or-equal latency and higher-or-equal
    accuracy, strictly better in one. Identical points are all on the front."""
    front = []
    for i, (lat_i, acc_i) in enumerate(points):
        dominated = any(
            lat_j <= lat_i and acc_j >= acc_i and (lat_j < lat_i or acc_j > acc_i)
            for j, (lat_j, acc_j) in enumerate(points)
            if j != i
        )
        front.append(not dominated)
    return front


# --------------------------------------------------------------------------------------------- comparing


def model_labels(entries: Sequence[Entry]) -> list[str]:
    """Model labels in first-seen order."""
    return list(dict.fromkeys(e.model for e in entries))


def select_baseline(entries: Sequence[Entry], wanted: str | None = None) -> str:
    """``wanted`` by exact label or unique substring; default: a run's baseline stage, else the first model."""
    labels = model_labels(entries)
    if not labels:
        raise UserError("nothing to compare: no measured models in the inputs")
    if wanted is None:
        for e in entries:
            if e.reference:
                return e.model
        return labels[0]
    if wanted in labels:
        return wanted
    matches = [label for label in labels if wanted in label]
    if len(matches) == 1:
        return matches[0]
    what = "matches several models" if matches else "matches no model"
    choices = matches or labels
    raise UserError(f"--baseline '{wanted}' {what}; models are: {', '.join(choices)}")


def _context_warnings(entries: Sequence[Entry], baseline: str) -> list[str]:
    warnings: list[str] = []
    per_sample = {}
    for e in entries:
        if e.input_shape:
            per_sample.setdefault(e.input_shape[1:], []).append(e.model)
    if len(per_sample) > 1:
        parts = "; ".join(
            f"[{', '.join(map(str, shape))}] for {', '.join(dict.fromkeys(models))}"
            for shape, models in per_sample.items()
        )
        warnings.append(f"input shapes differ (per sample): {parts}")
    by_device: dict[str, list[Entry]] = {}
    for e in entries:
        by_device.setdefault(e.device, []).append(e)
    for device, group in by_device.items():
        batches: dict[str, set[int]] = {}
        for e in group:
            batches.setdefault(e.model, set()).add(e.batch_size)
        if len({frozenset(b) for b in batches.values()}) > 1:
            parts = "; ".join(f"{m}: {', '.join(map(str, sorted(b)))}" for m, b in batches.items())
            warnings.append(f"batch sizes differ on {device} ({parts}); latency is only compared at equal batch size")
        for fact, name in (("onnxruntime", "ONNX Runtime versions"), ("cpu", "CPUs")):
            seen: dict[str, list[str]] = {}
            for e in group:
                value = getattr(e, fact)
                if value:
                    seen.setdefault(value, []).append(e.model)
            if len(seen) > 1:
                parts = "; ".join(f"{v} ({', '.join(dict.fromkeys(ms))})" for v, ms in seen.items())
                warnings.append(f"different {name} under the same device label '{device}': {parts}")
    missing = sorted(
        {e.device_label for e in entries if e.model != baseline}
        - {e.device_label for e in entries if e.model == baseline}
    )
    if missing:
        warnings.append(f"the baseline {baseline} was not measured on: {'; '.join(missing)} (no speed-up there)")
    return warnings


def _label_sha_warnings(entries: Sequence[Entry]) -> list[str]:
    shas: dict[str, set[str]] = {}
    for e in entries:
        if e.sha256:
            shas.setdefault(e.given_label, set()).add(e.sha256)
    return [
        f"model label '{label}' names different files (sha256 {', '.join(s[:12] for s in sorted(found))})"
        for label, found in shas.items()
        if len(found) > 1
    ]


def compare(
    entries: Sequence[Entry],
    baseline: str | None = None,
    min_effect: float = DEFAULT_MIN_EFFECT,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = RESAMPLES,
    extra_warnings: Sequence[str] = (),
) -> Comparison:
    """Every entry against the baseline on its device configuration, with a noise verdict."""
    if not 0 <= min_effect < 1:
        raise UserError(f"--min-effect must be in [0, 1) (a fraction, e.g. 0.02 for 2%); got {min_effect}")
    if not 0 < confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1 (e.g. 0.95); got {confidence}")
    entries = list(entries)
    chosen = select_baseline(entries, baseline)
    reference = {e.config_key: e for e in reversed(entries) if e.model == chosen}
    baseline_accuracy = next((e.accuracy for e in entries if e.model == chosen and e.accuracy is not None), None)
    order = {label: i for i, label in enumerate(model_labels(entries))}
    order[chosen] = -1
    devices = list(dict.fromkeys(e.config_key for e in entries))
    rows = []
    for e in sorted(entries, key=lambda e: (devices.index(e.config_key), order[e.model])):
        ref = reference.get(e.config_key)
        ref_accuracy = ref.accuracy if ref is not None and ref.accuracy is not None else baseline_accuracy
        delta = (e.accuracy - ref_accuracy) * 100 if e.accuracy is not None and ref_accuracy is not None else None
        speedup = ref.p50 / e.p50 if ref is not None and e.p50 > 0 else None
        ci = None
        if ref is None:
            verdict = NO_BASELINE
        elif e.model == chosen:
            verdict = BASELINE
        elif e.samples is None or ref.samples is None:
            verdict = NO_SAMPLES
        elif min(e.samples.size, ref.samples.size) < MIN_SAMPLES:
            verdict = TOO_FEW_SAMPLES
        else:
            ci = speedup_interval(ref.samples, e.samples, confidence, resamples)
            verdict = noise_verdict(ci, min_effect)
        rows.append(Row(e, ref, speedup, ci, delta, verdict))
    warnings = [*extra_warnings, *_label_sha_warnings(entries), *_context_warnings(entries, chosen)]
    return Comparison(entries, chosen, rows, warnings, min_effect, confidence, resamples)


# --------------------------------------------------------------------------------------------- rendering


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


TABLE_HEADERS = ["model", "device", "size", "p50 ms", "p90 ms", "p99 ms", "speed-up", "CI", "Δ acc (pt)", "verdict"]


def row_cells(row: Row) -> list[str]:
    """A row as text, shared by the terminal, Markdown and HTML tables."""
    e = row.entry
    return [
        e.model,
        e.device_label,
        format_size(e.size_bytes),
        format_ms(e.p50),
        format_ms(e.p90),
        format_ms(e.p99),
        f"{row.speedup:.2f}x" if row.speedup is not None else "-",
        f"{row.ci[0]:.3f}–{row.ci[1]:.3f}" if row.ci else "-",
        f"{row.delta_accuracy_pt:+.2f}" if row.delta_accuracy_pt is not None else "-",
        row.verdict,
    ]


def op_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Op type × profiled entry: 'mean ms/run (share)'. Ops sorted by their largest share."""
    profiled = comparison.profiled
    if not profiled:
        return [], []
    ops: dict[str, float] = {}
    for e in profiled:
        for op, t in (e.op_profile or {}).items():
            ops[op] = max(ops.get(op, 0.0), float(t.get("share", 0.0)))
    headers = ["op type"] + [f"{e.model} @ {e.device_label}" for e in profiled]
    rows = []
    for op in sorted(ops, key=lambda o: -ops[o]):
        cells = [op]
        for e in profiled:
            t = (e.op_profile or {}).get(op)
            cells.append(f"{t['mean_ms_per_run']:.3f} ms ({t['share']:.0%})" if t else "-")
        rows.append(cells)
    return headers, rows


_VERDICT_STYLE = {FASTER: "green", SLOWER: "bold red", WITHIN_NOISE: "dim", BASELINE: "cyan"}


def rich_tables(comparison: Comparison) -> list[Table]:
    ci_name = comparison.ci_header
    table = Table(
        title=f"edgeslim compare (baseline: {escape(comparison.baseline)})",
        caption=f"speed-up = baseline p50 / p50 on the same device, threads and batch; {ci_name} of the ratio of "
        f"medians, min effect {percent(comparison.min_effect)}",
    )
    for i, header in enumerate(TABLE_HEADERS):
        table.add_column(ci_name if header == "CI" else header, justify="left" if i < 2 or i == 9 else "right")
    for row in comparison.rows:
        cells = [escape(c) for c in row_cells(row)]
        style = _VERDICT_STYLE.get(row.verdict)
        cells[-1] = f"[{style}]{cells[-1]}[/{style}]" if style else cells[-1]
        table.add_row(*cells)
    tables = [table]
    headers, rows = op_table(comparison)
    if rows:
        ops = Table(title="per-op time (mean ms per run, share of op time)")
        for i, header in enumerate(headers):
            ops.add_column(escape(header), justify="left" if i == 0 else "right")
        for cells in rows:
            ops.add_row(*(escape(c) for c in cells))
        tables.append(ops)
    return tables


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown document: table, warnings, per-op breakdown, noise rule."""
    headers = [comparison.ci_header if h == "CI" else h for h in TABLE_HEADERS]
    lines = [
        "# edgeslim compare",
        "",
        f"Baseline: `{comparison.baseline}`. Speed-up = baseline p50 / p50 on the same device, threads and batch.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row_cells(r)) + " |" for r in comparison.rows]
    if comparison.warnings:
        lines += ["", "## Warnings", ""]
        lines += [f"- ⚠ {_md_cell(w)}" for w in comparison.warnings]
    op_headers, op_rows = op_table(comparison)
    if op_rows:
        lines += ["", "## Per-op time", "", "Mean ms per run (share of the measured op time).", ""]
        lines += ["| " + " | ".join(_md_cell(h) for h in op_headers) + " |", "|" + "---|" * len(op_headers)]
        lines += ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in op_rows]
    emulated = sorted({e.device for e in comparison.entries if e.emulated})
    lines += ["", "---", ""]
    if emulated:
        lines += [f"Devices {', '.join(emulated)}: {EMULATED_NOTE}.", ""]
    lines.append(comparison.noise_rule)
    return "\n".join(lines) + "\n"
