"""MiniLM sentiment: a real transformer through the whole pipeline (the evidence for issue 13).

Runs ``configs/minilm_sentiment.yaml`` through the Python API (``edgeslim.run``; a rerun reuses every
finished stage): the pretrained all-MiniLM-L6-v2 fine-tuned on the built-in ``rotten_tomatoes`` reviews
(the teacher / baseline), then attention heads + FFN neurons pruned, fine-tuned with distillation from the
teacher, exported to ONNX, quantized (INT8 where it is faster) and benchmarked. Then it reads the run's
``report.json`` and each stage's folder and writes, per stage, test accuracy, ONNX size, params and latency
(p50 with its bootstrap interval, p90/p99, speed-ups vs the baseline and the previous stage, all from the
pipeline's side-by-side measurement on the host profile: 1 thread, batch 1, the data's sequence length):

* ``docs/minilm_sentiment.json``: a list of objects, one per stage (``stage``, ``accuracy``, ``size_bytes``,
  ``latency_ms_p50``, ...);
* ``docs/minilm_sentiment.md``: the command, the machine, the table and what each stage did.

Nothing here assumes the model has one input: the inputs are read from the run's recorded input spec.

Usage::

    nice -n 19 .venv/bin/python bench/minilm_sentiment.py                 # the real run (docs/)
    nice -n 19 .venv/bin/python bench/minilm_sentiment.py --smoke         # a quick check of this script
    nice -n 19 .venv/bin/python bench/minilm_sentiment.py --max-samples 400 --epochs 1   # a timing probe

``--smoke`` (and any of ``--max-samples``/``--epochs``/``--max-length``) changes the run's name, so it never
reuses or overwrites the real run, and writes its Markdown/JSON into the run folder unless ``--docs-dir`` is
given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs/minilm_sentiment.yaml"
DOC_NAME = "minilm_sentiment"
SMOKE = {"max_samples": 120, "epochs": 1, "max_length": 32}


def log(message: str) -> None:
    print(f"[minilm {time.strftime('%H:%M:%S')}] {message}", flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------- the config


def shrink(raw: dict[str, Any], max_samples: int | None, epochs: int | None, max_length: int | None) -> list[str]:
    """Apply the reductions to the raw config in place; returns what changed (it also names the run)."""
    changed: list[str] = []
    data = raw.setdefault("data", {})
    if max_samples is not None:
        data["max_samples"] = max_samples
        changed.append(f"n{max_samples}")
    if max_length is not None:
        data["max_length"] = max_length
        changed.append(f"len{max_length}")
    stages = raw["stages"]
    if epochs is not None:
        for entry in stages:
            if isinstance(entry, dict):
                ((name, settings),) = entry.items()
                if name in ("train", "finetune") and isinstance(settings, dict):
                    settings["epochs"] = epochs
        changed.append(f"ep{epochs}")
    if max_samples is not None:  # calibration cannot use more training samples than there are
        train = int(max_samples * (1 - data.get("val_fraction", 0.1) - data.get("test_fraction", 0.2)))
        for entry in stages:
            if isinstance(entry, dict):
                ((name, settings),) = entry.items()
                if name in ("prune", "quantize") and isinstance(settings, dict) and "calibration_samples" in settings:
                    settings["calibration_samples"] = min(settings["calibration_samples"], max(train // 2, 8))
    if changed:
        raw["name"] = f"{raw['name']}_" + "_".join(changed)
    return changed


# --------------------------------------------------------------------------------------------- reading a run


def speedup(s: Any) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "against": s.against,
        "ratio": s.ratio,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "verdict": s.verdict,
    }


def stage_extras(record: Any) -> dict[str, Any]:
    """What each stage did, in a few fields (from its details)."""
    d = record.details or {}
    out: dict[str, Any] = {}
    if record.name in ("train", "finetune"):
        for key in ("best_epoch", "stopped_early", "torch_test_accuracy", "val_accuracy_before"):
            if key in d:
                out[key] = d[key]
        epochs = d.get("epochs")
        if isinstance(epochs, list):
            keys = ("epoch", "train_loss", "val_accuracy", "val_loss")
            out["epochs"] = [{k: e.get(k) for k in keys} for e in epochs if isinstance(e, dict)]
    elif record.name == "prune":
        for key in (
            "importance",
            "pruning_ratio",
            "params_before",
            "params_after",
            "params_kept",
            "macs_before",
            "macs_after",
            "macs_kept",
            "val_accuracy_before",
            "steps",
            "attention_heads",
        ):
            if key in d:
                out[key] = d[key]
    elif record.name == "export":
        if isinstance(d.get("parity"), dict):
            out["parity"] = d["parity"]
        if "opset" in d:
            out["opset"] = d["opset"]
    elif record.name == "quantize":
        for key in ("method", "deliverable", "chosen", "recipe", "float_val_accuracy", "val_accuracy", "float"):
            if key in d:
                out[key] = d[key]
        coverage = d.get("int8_coverage")
        if isinstance(coverage, dict):
            out["int8_coverage"] = {k: coverage.get(k) for k in ("integer_fraction", "is_int8", "summary")}
        if isinstance(d.get("candidates"), list):
            keys = ("name", "label", "val_accuracy", "accuracy_drop", "p50_ms", "speedup_vs_float", "size_bytes")
            out["candidates"] = [
                {**{k: c.get(k) for k in keys}, "chosen": c.get("chosen"), "error": c.get("error")}
                for c in d["candidates"]
                if isinstance(c, dict)
            ]
    elif record.name == "benchmark" and isinstance(d.get("latency"), list):
        out["sweep"] = d["latency"]
    return out


def input_spec(run_dir: Path, record: Any) -> list[dict[str, Any]]:
    """The run's recorded inputs (names, dtypes, axes, example sizes), from a stage's manifest."""
    manifest = run_dir / record.dir / "manifest.json"
    try:
        return list(json.loads(manifest.read_text()).get("input_spec") or [])
    except (OSError, ValueError):
        return []


def sequence_length(spec: list[dict[str, Any]]) -> int | None:
    """The example size of the ``sequence`` axis of any input (token inputs share it)."""
    for item in spec:
        axes, example = item.get("axes") or [], item.get("example") or []
        if "sequence" in axes and len(example) == len(axes):
            return int(example[axes.index("sequence")])
    return None


def rows_from(result: Any) -> list[dict[str, Any]]:
    rows = []
    for record in result.stages:
        m = record.metrics
        row: dict[str, Any] = {
            "stage": record.label,
            "type": record.name,
            "status": record.status,
            "duration_s": record.duration_s,
        }
        if m is not None:
            lat = m.latency_ms
            row.update(
                {
                    "accuracy": m.accuracy,
                    "val_accuracy": m.val_accuracy,
                    "size_bytes": m.size_bytes,
                    "params": m.params,
                    "macs": m.macs,
                    "deployable": m.deployable,
                    "latency_ms_p50": lat.p50 if lat else None,
                    "latency_ms_p50_ci": list(m.latency_p50_ci_ms) if m.latency_p50_ci_ms else None,
                    "latency_ms_p90": lat.p90 if lat else None,
                    "latency_ms_p99": lat.p99 if lat else None,
                    "latency_ms_mean": lat.mean if lat else None,
                    "latency_ms_std": lat.std if lat else None,
                    "latency_runs": m.latency_runs,
                    "latency_rounds": m.latency_rounds,
                    "threads": m.threads,
                    "batch_size": m.batch_size,
                    "speedup_vs_baseline": speedup(m.speedup_vs_reference),
                    "speedup_vs_previous": speedup(m.speedup_vs_previous),
                }
            )
        if record.error:
            row["error"] = record.error
        row.update(stage_extras(record))
        row["notes"] = list(record.notes)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- writing


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def fmt_ratio(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    ci = f" [{s['ci_low']:.2f}–{s['ci_high']:.2f}]" if s.get("ci_low") is not None else ""
    return f"{s['ratio']:.2f}x{ci}"


def fmt_p50(row: dict[str, Any]) -> str:
    if row.get("latency_ms_p50") is None:
        return "-"
    ci = row.get("latency_ms_p50_ci")
    return f"{row['latency_ms_p50']:.2f}" + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else "")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], command: str, failure: str | None) -> str:
    base = next((r for r in rows if r["type"] == "baseline" and r.get("accuracy") is not None), None)
    dev = meta["device"]
    lines = [
        "# MiniLM sentiment: a real transformer through the pipeline",
        "",
        "The pretrained sentence-transformers all-MiniLM-L6-v2 (installed with edgeslim; a new 2-class head) "
        "fine-tuned on the built-in `rotten_tomatoes` reviews (the teacher and baseline), then attention heads "
        "and FFN neurons pruned, fine-tuned with distillation from the teacher, exported to ONNX, quantized "
        "(INT8 only where it is faster) and benchmarked.",
        "",
        f"Command: `{command}`",
        "",
        f"Config: [`{meta['config']}`](../{meta['config']})"
        + (f" with reductions: {', '.join(meta['reductions'])}" if meta["reductions"] else "")
        + f"; run folder `{meta['run_dir']}`; {meta['date']}.",
        "",
        f"Data: {meta['test_samples']} test reviews (accuracy: ONNX Runtime top-1 on the test split), "
        f"inputs {', '.join(meta['inputs']) or '?'}"
        + (f", sequence length {meta['sequence_length']}." if meta["sequence_length"] else "."),
        "",
        f"Machine: {dev.get('cpu')}, {dev.get('logical_cores')} logical cores "
        f"({', '.join(dev.get('isa_flags') or [])}), {dev.get('os')}, onnxruntime {dev.get('onnxruntime')}, "
        f"torch {meta['versions'].get('torch', '?')}. A shared machine: other work may load the cores.",
        "",
        "| stage | status | accuracy | Δ acc (pt) | size | params | p50 ms [95% CI] | x faster vs baseline | "
        "x faster vs previous | stage time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = r.get("accuracy")
        delta = f"{(acc - base['accuracy']) * 100:+.2f}" if acc is not None and base else "-"
        params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else "-"
        took = f"{r['duration_s']:.0f} s" if r.get("duration_s") is not None else "-"
        lines.append(
            f"| {r['stage']} | {r['status']} | {f'{acc:.2%}' if acc is not None else '-'} | {delta} | "
            f"{fmt_size(r.get('size_bytes'))} | {params} | {fmt_p50(r)} | {fmt_ratio(r.get('speedup_vs_baseline'))} | "
            f"{fmt_ratio(r.get('speedup_vs_previous'))} | {took} |"
        )
    measured = next((r for r in rows if r.get("latency_runs")), None)
    lines += [
        "",
        "Latency: ONNX Runtime CPU, "
        + (f"{measured['threads']} thread, batch {measured['batch_size']}" if measured else "1 thread, batch 1")
        + (f", sequence {meta['sequence_length']}" if meta["sequence_length"] else "")
        + ": each stage's model timed side by side with the previous "
        "stage's and the baseline's in interleaved rounds in one process (the pipeline's measurement; "
        "`report.json` has the raw samples). [a–b]: 95% bootstrap interval of the median or of the ratio of "
        "medians. Size: bytes of the stage's deployable ONNX file.",
        "",
        f"Whole run: {meta['wall_s']:.0f} s wall time in this invocation (stages reused from an earlier "
        "invocation take ~0 s here).",
    ]
    if failure:
        lines += ["", f"**The run stopped:** {failure}"]
    notes = [(r["stage"], n) for r in rows for n in r.get("notes") or []]
    if notes:
        lines += ["", "## What each stage said", ""]
        lines += [f"- `{stage}`: {note}" for stage, note in notes]
    quant = next((r for r in rows if r["type"] == "quantize" and r.get("candidates")), None)
    if quant:
        lines += [
            "",
            "## Quantization candidates",
            "",
            "Each candidate's validation accuracy, and its p50 timed side by side with the others in the quantize "
            "stage (host profile); the stage keeps the fastest within its accuracy budget.",
            "",
            "| candidate | what | val accuracy | p50 ms | x faster vs float [95% CI] | size | chosen | error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in quant["candidates"]:
            val = f"{c['val_accuracy']:.2%}" if isinstance(c.get("val_accuracy"), float) else "-"
            p50 = f"{c['p50_ms']:.2f}" if isinstance(c.get("p50_ms"), float) else "-"
            ci = c.get("speedup_vs_float")
            ratio = "-"
            if isinstance(c.get("p50_ms"), float) and isinstance(quant.get("float"), dict):
                ratio = f"{quant['float']['p50_ms'] / c['p50_ms']:.2f}x"
                if isinstance(ci, list) and len(ci) == 2:
                    ratio += f" [{ci[0]:.2f}–{ci[1]:.2f}]"
            size = fmt_size(c.get("size_bytes")) if c.get("size_bytes") else "-"
            error = (c.get("error") or "").replace("|", "\\|")[:160]
            lines.append(
                f"| {c.get('name')} | {c.get('label') or ''} | {val} | {p50} | {ratio} | {size} | "
                f"{'yes' if c.get('chosen') else ''} | {error} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "artifacts", help="runs go to OUT_DIR/<run name>/")
    parser.add_argument("--docs-dir", type=Path, default=None, help="default: docs/ (reduced runs: the run folder)")
    parser.add_argument("--smoke", action="store_true", help=f"a quick check: {SMOKE}")
    parser.add_argument("--max-samples", type=int, default=None, help="data.max_samples (stratified subset)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of train and finetune")
    parser.add_argument("--max-length", type=int, default=None, help="data.max_length (tokens)")
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    args = parser.parse_args()

    import edgeslim
    from edgeslim.devices.edgeslim_bench import device_facts

    config_path = args.config.resolve()
    raw = yaml.safe_load(config_path.read_text())
    reduce = dict(SMOKE) if args.smoke else {}
    for key in ("max_samples", "epochs", "max_length"):
        if getattr(args, key) is not None:
            reduce[key] = getattr(args, key)
    reductions = shrink(raw, reduce.get("max_samples"), reduce.get("epochs"), reduce.get("max_length"))
    config = edgeslim.parse_config(raw, base_dir=config_path.parent)
    out_dir = args.out_dir.resolve()
    run_dir = out_dir / config.name
    docs = (args.docs_dir or (run_dir if reductions else ROOT / "docs")).resolve()

    log(
        f"edgeslim.run({rel(config_path)}{' reduced: ' + ', '.join(reductions) if reductions else ''}, "
        f"out={rel(out_dir)}) -> {rel(run_dir)}"
    )
    start = time.perf_counter()
    failure = None
    try:
        result = edgeslim.run(config, out=out_dir, force=args.force)
    except Exception as exc:  # UserError, StageFailed or a library failure: report.json keeps the stages made so far
        failure = f"{type(exc).__name__}: {exc}"
        log(f"run failed: {failure}")
        result = edgeslim.open_run(run_dir) if (run_dir / "report.json").is_file() else None
        if result is None:
            return 2
    wall = time.perf_counter() - start
    log(f"pipeline done in {wall:.0f} s")

    rows = rows_from(result)
    spec = input_spec(run_dir, next((s for s in result.stages if s.metrics is not None), result.stages[0]))
    report = result.report
    command = shlex.join(["nice", "-n", "19", ".venv/bin/python", rel(Path(sys.argv[0])), *sys.argv[1:]])
    meta = {
        "config": rel(config_path),
        "reductions": reductions,
        "run_dir": rel(run_dir),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "device": report.device or device_facts(),
        "versions": report.versions,
        "test_samples": report.test_samples,
        "inputs": [f"`{i.get('name')}` {i.get('dtype')} {i.get('axes')}" for i in spec],
        "sequence_length": sequence_length(spec),
        "wall_s": wall,
    }
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{DOC_NAME}.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows, meta, command, failure)
    (docs / f"{DOC_NAME}.md").write_text(text)
    log(f"wrote {rel(docs / (DOC_NAME + '.md'))} and {rel(docs / (DOC_NAME + '.json'))}")
    print(text)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
