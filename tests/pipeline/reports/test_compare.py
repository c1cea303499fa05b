"""``edgeslim compare``: noise verdicts on known effects, baseline choice, warnings, run folders, CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeslim.devices.edgeslim_bench import summarize
from edgeslim.devices.latency_report import validate_report
from edgeslim.errors import UserError
from edgeslim.reports.compare import (
    BASELINE,
    FASTER,
    NO_SAMPLES,
    SLOWER,
    WITHIN_NOISE,
    compare,
    load_entries,
    select_baseline,
    speedup_interval,
    to_markdown,
)

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = 300


def latency_samples(scale: float, seed: int, n: int = SAMPLES) -> list[float]:
    """Timings around ``scale`` ms with 2% noise (the baseline is scale 1.0)."""
    return list(np.random.default_rng(seed).normal(scale, 0.02 * scale, n))


def measurement(
    samples: list[float] | None = None,
    *,
    threads: int = 1,
    batch_size: int = 1,
    sample_shape: tuple[int, ...] = (1, 8, 8),
    op_profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    samples = samples or latency_samples(1.0, 0)
    latency = summarize(samples)
    return {
        "threads": threads,
        "batch_size": batch_size,
        "input_name": "input",
        "input_shape": [batch_size, *sample_shape],
        "input_dtype": "float32",
        "graph_optimization": "all",
        "warmup": 5,
        "runs": len(samples),
        "latency_ms": latency,
        "samples_ms": samples,
        "throughput_per_s": batch_size * 1e3 / latency["p50"],
        "session_init_ms": 3.0,
        "first_inference_ms": 1.5,
        "peak_rss_mb": 80.0,
        "session_rss_mb": 4.0,
        "op_profile": op_profile,
    }


def make_report(
    label: str,
    results: list[dict[str, Any]] | None = None,
    *,
    profile: str = "host",
    kind: str = "host",
    accuracy: float | None = None,
    cpu: str = "Test CPU 3000",
    onnxruntime: str = "1.32.0",
    size_bytes: int = 100_000,
    file_bytes: bytes | None = None,
) -> dict[str, Any]:
    """A complete ``edgeslim.latency-report/1`` object; every schema field filled."""
    report = {
        "schema": "edgeslim.latency-report/1",
        "tool": {"name": "edgeslim-bench", "version": "0.1.0"},
        "created": "2025-01-01T00:00:00+0000",
        "model": {
            "label": label,
            "file": f"{label}.onnx",
            "sha256": hashlib.sha256(file_bytes if file_bytes is not None else label.encode()).hexdigest(),
            "size_bytes": size_bytes,
        },
        "device": {
            "profile": profile,
            "kind": kind,
            "emulated": kind == "arm64-emulated",
            "cpu": cpu,
            "isa_flags": ["avx2"],
            "logical_cores": 2,
            "machine": "x86_64",
            "os": "Linux 6.1",
            "python": "3.11.9",
            "onnxruntime": onnxruntime,
        },
        "context": {} if accuracy is None else {"accuracy": accuracy},
        "results": results or [measurement()],
        "notes": [],
    }
    validate_report(report, label)  # the helper must never build a report the loader would refuse
    return report


def write(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


KNOWN_EFFECTS = {  # label: (latency scale vs the baseline, seed, expected verdict)
    "A-baseline": (1.0, 1, BASELINE),
    "B-20pct-faster": (0.8, 2, FASTER),
    "C-20pct-slower": (1.2, 3, SLOWER),
    "D-same": (1.0, 4, WITHIN_NOISE),
    "E-1pct-faster": (0.99, 5, WITHIN_NOISE),
}


@pytest.fixture
def known_reports(tmp_path: Path) -> list[Path]:
    return [
        write(tmp_path / f"{label}.json", make_report(label, [measurement(latency_samples(scale, seed))]))
        for label, (scale, seed, _) in KNOWN_EFFECTS.items()
    ]


def test_noise_verdicts_on_known_effects(known_reports):
    comparison = compare(load_entries(known_reports))
    assert comparison.baseline == "A-baseline"
    verdicts = {row.entry.model: row.verdict for row in comparison.rows}
    assert verdicts == {label: expected for label, (_, _, expected) in KNOWN_EFFECTS.items()}
    base = next(r.entry for r in comparison.rows if r.entry.model == "A-baseline")
    for row in comparison.rows:
        assert row.speedup == pytest.approx(base.p50 / row.entry.p50, rel=1e-12)
    ci_b = next(r.ci for r in comparison.rows if r.entry.model == "B-20pct-faster")
    assert ci_b[0] < 1.25 < ci_b[1]  # the interval covers the true ratio 1 / 0.8


def test_min_effect_and_confidence_change_the_verdict(known_reports):
    # With no minimum effect, a 1% speed-up over 300 samples at 2% noise is resolvable.
    comparison = compare(load_entries(known_reports), min_effect=0.0, confidence=0.95)
    verdicts = {row.entry.model: row.verdict for row in comparison.rows}
    assert verdicts["E-1pct-faster"] == FASTER
    with pytest.raises(UserError, match="--min-effect"):
        compare(load_entries(known_reports), min_effect=1.5)
    with pytest.raises(UserError, match="--confidence"):
        compare(load_entries(known_reports), confidence=95)


def test_bootstrap_is_seeded_and_vectorised():
    base, cand = np.array(latency_samples(1.0, 10, 500)), np.array(latency_samples(0.9, 11, 500))
    speedup_interval(base, cand)  # warm-up
    started = time.perf_counter()
    first = speedup_interval(base, cand, confidence=0.95, resamples=2000)
    elapsed = time.perf_counter() - started
    assert first == speedup_interval(base, cand, confidence=0.95, resamples=2000)
    assert first[0] < np.median(base) / np.median(cand) < first[1]
    assert first[0] > 1.08 and first[1] < 1.14  # about the true 1 / 0.9, with 2% noise on 500 samples
    assert elapsed < 1.0, f"bootstrap of two 500-sample sets took {elapsed:.2f}s"


def test_baseline_by_label_or_unique_substring(known_reports):
    entries = load_entries(known_reports)
    assert select_baseline(entries, "D-same") == "D-same"
    assert select_baseline(entries, "slower") == "C-20pct-slower"
    comparison = compare(entries, baseline="20pct-slower")
    assert comparison.baseline == "C-20pct-slower"
    assert {r.entry.model: r.verdict for r in comparison.rows}["A-baseline"] == FASTER
    with pytest.raises(UserError, match=r"matches several models; models are: B-20pct-faster, C-20pct-slower"):
        select_baseline(entries, "20pct")
    with pytest.raises(UserError, match=r"'nope' matches no model; models are: A-baseline, B-20pct-faster, C-20pct"):
        compare(entries, baseline="nope")


def test_missing_samples_say_no_samples(tmp_path):
    run = fake_run(tmp_path / "r", samples=False)  # an older report.json: stage metrics without raw samples
    comparison = compare(load_entries([run], []))
    stage_rows = [r for r in comparison.rows if r.entry.stage in ("train", "export")]
    assert [r.verdict for r in stage_rows] == [NO_SAMPLES, NO_SAMPLES]
    assert all(r.speedup is not None for r in stage_rows)  # the p50 ratio is still there
    assert "'no samples'" in to_markdown(comparison)


def test_warnings_for_batch_size_and_input_shape(tmp_path):
    a = write(tmp_path / "a.json", make_report("a", [measurement(batch_size=1)]))
    b = write(tmp_path / "b.json", make_report("b", [measurement(batch_size=8)]))
    c = write(tmp_path / "c.json", make_report("c", [measurement(sample_shape=(3, 32, 32))]))
    comparison = compare(load_entries([a, b, c]))
    text = "\n".join(comparison.warnings)
    assert "batch sizes differ on host (a: 1; b: 8; c: 1)" in text
    assert "input shapes differ (per sample): [1, 8, 8] for a, b; [3, 32, 32] for c" in text
    assert "the baseline a was not measured on: host · 1 thread · batch 8" in text
    assert {r.entry.model: r.verdict for r in comparison.rows}["b"] == "no baseline here"
    same = compare(load_entries([a, write(tmp_path / "d.json", make_report("d"))]))
    assert same.warnings == []


def test_warnings_for_cpu_runtime_and_sha(tmp_path):
    a = write(tmp_path / "a.json", make_report("m", cpu="CPU one", onnxruntime="1.32.0", file_bytes=b"1"))
    b = write(tmp_path / "sub" / "b.json", make_report("m", cpu="CPU two", onnxruntime="1.20.0", file_bytes=b"2"))
    entries = load_entries([a, b])
    assert [e.model for e in entries] == ["m (a.json)", "m (b.json)"]  # same label and device: told apart
    text = "\n".join(compare(entries).warnings)
    assert "different ONNX Runtime versions under the same device label 'host': 1.32.0 (m (a.json))" in text
    assert "different CPUs under the same device label 'host': CPU one" in text
    assert "model label 'm' names different files (sha256 " in text


def test_same_model_on_two_devices_keeps_its_label(tmp_path):
    host = write(tmp_path / "host.json", make_report("m"))
    pi = write(tmp_path / "pi.json", make_report("m", profile="pi4", kind="remote", cpu="Cortex-A72"))
    entries = load_entries([host, pi])
    assert [(e.model, e.device) for e in entries] == [("m", "host"), ("m", "pi4")]
    assert not [w for w in compare(entries).warnings if "CPUs" in w]  # different device labels: expected


def test_markdown_has_table_warnings_ops_and_noise_rule(tmp_path):
    ops = {
        "Conv": {"mean_ms_per_run": 0.6, "nodes_per_run": 2, "share": 0.75},
        "Gemm": {"mean_ms_per_run": 0.2, "nodes_per_run": 1, "share": 0.25},
    }
    a = write(tmp_path / "a.json", make_report("a", [measurement(op_profile=ops)], accuracy=0.9))
    b = write(tmp_path / "b.json", make_report("b", [measurement(latency_samples(0.5, 9), batch_size=2)]))
    md = to_markdown(compare(load_entries([a, b])))
    assert "| model | device | size | p50 ms | p90 ms | p99 ms | speed-up | 95% CI | Δ acc (pt) | verdict |" in md
    assert "| a | host · 1 thread · batch 1 | 97.7 KB |" in md
    assert "## Warnings" in md and "batch sizes differ" in md
    assert "| Conv | 0.600 ms (75%) |" in md
    assert "Noise rule:" in md and "2,000 resamples" in md and "1 + min-effect (2%)" in md


# --------------------------------------------------------------------------------------------- run folders


def fake_run(run_dir: Path, *, samples: bool = True) -> Path:
    """A run folder as the runner writes it: stages (one failed), a benchmark with per-profile reports."""

    def metrics(scale: float, accuracy: float, size: int) -> dict[str, Any]:
        timings = latency_samples(scale, int(scale * 100))
        stats = summarize(timings)
        m = {
            "accuracy": accuracy,
            "size_bytes": size,
            "params": 1000,
            "macs": 10_000,
            "latency_ms": {k: stats[k] for k in ("p50", "p90", "p99", "mean", "std")},
            "threads": 1,
            "batch_size": 1,
        }
        if samples:
            m.update(latency_samples_ms=timings, model_sha256="ab" * 32, input_shape=[1, 1, 8, 8])
        return m

    stages = [
        {"index": 0, "name": "train", "dir": "00-train", "status": "ran", "metrics": metrics(1.0, 0.90, 400_000)},
        {"index": 1, "name": "baseline", "dir": "01-baseline", "status": "ran", "metrics": metrics(1.0, 0.91, 400_000)},
        {"index": 2, "name": "prune", "dir": "02-prune", "status": "failed", "error": "boom"},
        {"index": 3, "name": "export", "dir": "03-export", "status": "ran", "metrics": metrics(0.5, 0.89, 100_000)},
        {
            "index": 4,
            "name": "benchmark",
            "dir": "04-benchmark",
            "status": "cached",
            "metrics": metrics(0.5, 0.89, 100_000),
            "details": {
                "reports": {
                    "host": "latency-host.json",
                    "arm64-cortex-a72": "latency-arm64-cortex-a72.json",
                    "pi5": "latency-pi5.json",  # listed but missing: skipped with a warning
                }
            },
            "notes": [],
        },
    ]
    host = make_report(
        "model", [measurement(latency_samples(0.5, 40)), measurement(latency_samples(0.3, 41), batch_size=4)]
    )
    host["context"] = {"accuracy": 0.89, "run": "r"}
    arm = make_report("model", profile="arm64-cortex-a72", kind="arm64-emulated", cpu="QEMU")
    write(run_dir / "04-benchmark" / "latency-host.json", host)
    write(run_dir / "04-benchmark" / "latency-arm64-cortex-a72.json", arm)
    report = {
        "run": "r",
        "created": "2025-01-01T00:00:00+0000",
        "config_hash": "c0ffee",
        "versions": {"onnxruntime": "1.32.0"},
        "device": {"cpu": "Test CPU 3000", "onnxruntime": "1.32.0", "logical_cores": 2},
        "device_profile": {"name": "host", "threads": [1], "batch_sizes": [1, 4]},
        "stages": stages,
    }
    write(run_dir / "report.json", report)
    return run_dir


def test_run_folder_entries(tmp_path):
    run = fake_run(tmp_path / "r")
    problems: list[str] = []
    entries = load_entries([run], problems)
    got = [(e.model, e.device, e.batch_size) for e in entries]
    assert got == [
        ("r/00-train", "host", 1),
        ("r/01-baseline", "host", 1),
        ("r/03-export", "host", 1),
        ("r/04-benchmark", "host", 1),  # the host report replaced the stage's own measurement
        ("r/04-benchmark", "host", 4),
        ("r/04-benchmark", "arm64-cortex-a72", 1),
    ]
    assert len(problems) == 1 and "device profile 'pi5' skipped" in problems[0]
    arm = entries[-1]
    assert arm.emulated and "emulated — latency not representative" in arm.device_label
    assert arm.accuracy == 0.89  # the benchmark stage's accuracy when the report carries none
    comparison = compare(entries)
    assert comparison.baseline == "r/01-baseline"
    bench = next(r for r in comparison.rows if r.entry.model == "r/04-benchmark" and r.entry.config_key[2] == 1)
    assert bench.verdict == FASTER and bench.delta_accuracy_pt == pytest.approx(-2.0)
    with pytest.raises(UserError, match="pi5"):
        load_entries([run])  # without a list to collect them, problems are errors


def test_two_runs_with_the_same_name_are_told_apart(tmp_path):
    first, second = fake_run(tmp_path / "a" / "r"), fake_run(tmp_path / "b" / "r")
    entries = load_entries([first, second, first], [])  # a repeated argument is read once
    keys = [(e.model, e.config_key) for e in entries]
    assert len(keys) == len(set(keys)) == 12
    assert f"r/01-baseline ({first})" in {e.model for e in entries}
    assert compare(entries).baseline == f"r/01-baseline ({first})"


def test_run_report_json_path_works_like_the_folder(tmp_path):
    run = fake_run(tmp_path / "r")
    problems: list[str] = []
    assert [e.model for e in load_entries([run / "report.json"], problems)] == [
        e.model for e in load_entries([run], [])
    ]


# --------------------------------------------------------------------------------------------- CLI


def edgeslim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edgeslim.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("edgeslim: error: ") and needle in lines[0], lines[0]


def test_cli_compare_end_to_end(tmp_path, known_reports):
    proc = edgeslim("compare", *map(str, known_reports), "--markdown", "out/c.md", "--html", "out/c.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "slower (regression)" in proc.stdout and "B-20pct-faster" in proc.stdout
    assert (tmp_path / "out" / "c.md").read_text().startswith("# edgeslim compare")
    assert (tmp_path / "out" / "c.html").read_text().startswith("<!DOCTYPE html>")
    help_text = edgeslim("compare", "--help", cwd=tmp_path).stdout
    assert "Noise rule:" in help_text and "within noise" in help_text


def test_cli_errors_are_one_line_exit_2(tmp_path, known_reports):
    assert_one_line_error(edgeslim("compare", "missing.json", cwd=tmp_path), "missing.json: no such file or folder")
    not_report = write(tmp_path / "config.json", {"name": "x", "stages": ["baseline"]})
    assert_one_line_error(edgeslim("compare", str(not_report), cwd=tmp_path), "not an edgeslim latency report")
    (tmp_path / "garbage.json").write_text("{not json")
    assert_one_line_error(edgeslim("compare", "garbage.json", cwd=tmp_path), "cannot read JSON")
    assert_one_line_error(
        edgeslim("compare", *map(str, known_reports), "--baseline", "zzz", cwd=tmp_path),
        "models are: A-baseline, B-20pct-faster",
    )
    assert_one_line_error(edgeslim("compare", str(tmp_path), cwd=tmp_path), "not an edgeslim run folder")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny run (about 10 s): train 1 epoch, baseline, prune, export, benchmark."""
    from edgeslim.api import parse_config
    from edgeslim.api import run as run_pipeline
    from tests.conftest import small_config

    stages = [{"train": {"epochs": 1}}, "baseline", {"prune": {"pruning_ratio": 0.5}}, "export"]
    stages.append({"benchmark": {"runs": 20, "warmup": 2}})
    config = small_config(stages, data={"name": "digits", "max_samples": 300}, measure={"runs": 20, "warmup": 2})
    out = tmp_path_factory.mktemp("real-run")
    run_pipeline(parse_config(config), out).report.to_json()
    return out / "t"


def test_real_run_folder(real_run, tmp_path):
    from edgeslim.reports.html import write_run_html

    run = json.loads((real_run / "report.json").read_text())
    problems: list[str] = []
    entries = load_entries([real_run], problems)
    assert problems == []
    host = [e for e in entries if e.device == "host" and (e.threads, e.batch_size) == (1, 1)]
    assert [e.model for e in host] == ["t/00-train", "t/01-baseline", "t/02-prune", "t/03-export", "t/04-benchmark"]
    assert all(e.accuracy is not None and e.size_bytes and e.p50 > 0 for e in host)
    comparison = compare(entries)
    assert comparison.baseline == "t/01-baseline"
    stage_metrics = {s["name"]: s["metrics"] for s in run["stages"]}
    has_samples = "latency_samples_ms" in stage_metrics["prune"]
    prune = next(r for r in comparison.rows if r.entry.model == "t/02-prune")
    assert (prune.verdict != NO_SAMPLES) == has_samples
    assert prune.speedup == pytest.approx(stage_metrics["baseline"]["latency_ms"]["p50"] / prune.entry.p50)
    reports = run["stages"][-1]["details"].get("reports")
    if reports:  # the benchmark stage's per-profile reports replace its own host measurement
        bench = [e for e in entries if e.model == "t/04-benchmark"]
        assert {e.device for e in bench} == set(reports)
        assert all(e.source.endswith(".json") for e in bench)
    if "model_sha256" in stage_metrics["export"]:
        export, bench_host = (next(e for e in host if e.model == m) for m in ("t/03-export", "t/04-benchmark"))
        assert export.sha256 == bench_host.sha256  # the benchmark measures the exported file
    page = write_run_html(real_run).read_text()
    assert 'id="plot-latency"' in page and 'id="plot-size"' in page and 'id="plot-pareto"' in page
    proc = edgeslim("compare", str(real_run), "--baseline", "prune", cwd=tmp_path)
    assert proc.returncode == 0 and "t/02-prune" in proc.stdout, proc.stderr
