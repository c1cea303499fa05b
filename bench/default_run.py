"""Reproduce the README's headline figures for the default pipeline, side by side in one run.

1. a fresh ``edgeslim run configs/mnist_cnn.yaml`` (wall time),
2. the same command again with nothing changed (wall time: everything reused),
3. interleaved A/B latency of the baseline's FP32 ONNX vs the final INT8 model: ``--rounds``
   rounds, each model measured in a fresh process per round (warm-up, then ``--runs`` runs),
   order alternating, so drift and a noisy neighbour hit both alike.

Writes docs/default_run.json and docs/default_run.md. Usage:
    .venv/bin/python bench/default_run.py [--rounds 15] [--runs 300] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslim.devices.edgeslim_bench import device_facts  # noqa: E402
from edgeslim.devices.host import measure_latency  # noqa: E402


def timed_run(config: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv/bin/edgeslim"), "run", str(config), "--out", str(out)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/mnist_cnn.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--reuse", action="store_true", help="keep an existing run instead of a fresh one")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    run_dir = args.out / "mnist_cnn"
    fresh_s = None
    if not args.reuse:
        shutil.rmtree(run_dir, ignore_errors=True)
        fresh_s = timed_run(args.config, args.out)
    rerun_s = timed_run(args.config, args.out)
    report = json.loads((run_dir / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    baseline = run_dir / stages["baseline"]["dir"] / "deploy.onnx"
    last = report["stages"][-1]
    final = run_dir / last["dir"] / "model.onnx"
    inputs = run_dir / ".bench_inputs.npy"
    import numpy as np

    from edgeslim.api import load_config
    from edgeslim.data.datasets import load_data

    data = load_data(load_config(args.config).data)
    np.save(inputs, data.test.tensors[0][:64].numpy())

    p50 = {"baseline_fp32": [], "final": []}
    ratios = []
    for r in range(args.rounds):
        order = ["baseline_fp32", "final"] if r % 2 == 0 else ["final", "baseline_fp32"]
        got = {}
        for name in order:
            model = baseline if name == "baseline_fp32" else final
            res = measure_latency(
                model,
                threads=1,
                batch_size=1,
                warmup=50,
                runs=args.runs,
                max_seconds=None,
                graph_optimization="all",
                inputs=inputs,
            )
            got[name] = res["latency_ms"]["p50"]
            p50[name].append(got[name])
        ratios.append(got["baseline_fp32"] / got["final"])
    inputs.unlink()

    base_m, final_m = stages["baseline"]["metrics"], last["metrics"]
    result = {
        "config": str(args.config.relative_to(ROOT)),
        "device": device_facts(),
        "fresh_run_s": fresh_s,
        "cached_rerun_s": rerun_s,
        "stage_durations_s": {s["name"]: s.get("duration_s") for s in report["stages"]},
        "accuracy": {
            "baseline": base_m["accuracy"],
            "final": final_m["accuracy"],
            "drop_points": (base_m["accuracy"] - final_m["accuracy"]) * 100,
        },
        "size_bytes": {
            "baseline": base_m["size_bytes"],
            "final": final_m["size_bytes"],
            "ratio": base_m["size_bytes"] / final_m["size_bytes"],
        },
        "latency_p50_ms": {
            k: {"q1_median_q3": quartiles(v), "min": min(v), "max": max(v), "rounds": v} for k, v in p50.items()
        },
        "speedup": {"q1_median_q3": quartiles(ratios), "min": min(ratios), "max": max(ratios), "rounds": ratios},
        "method": f"{args.rounds} interleaved rounds; each round measures each model in a fresh process: "
        f"50 warm-up + {args.runs} timed runs, 1 thread, batch 1, real test images",
    }
    args.docs.mkdir(exist_ok=True)
    (args.docs / "default_run.json").write_text(json.dumps(result, indent=2) + "\n")

    def fmt(q: tuple[float, float, float], unit: str = "") -> str:
        return f"{q[1]:.3f}{unit} (IQR {q[0]:.3f}–{q[2]:.3f})"

    lat = result["latency_p50_ms"]
    md = [
        "# Default pipeline: measured figures",
        "",
        f"Command: `.venv/bin/python bench/default_run.py --rounds {args.rounds} --runs {args.runs}`"
        + (" --reuse" if args.reuse else ""),
        "",
        f"Machine: {result['device']['cpu']}, {result['device']['logical_cores']} logical cores "
        f"({', '.join(result['device']['isa_flags'])}), {result['device']['os']}, "
        f"onnxruntime {result['device']['onnxruntime']}. A shared machine: other tenants may load the cores.",
        "",
        "| figure | baseline (FP32 ONNX) | final (INT8) | ratio |",
        "|---|---|---|---|",
        f"| test accuracy (1,001 MNIST-5k images) | {base_m['accuracy']:.2%} | {final_m['accuracy']:.2%} | "
        f"{-result['accuracy']['drop_points']:+.2f} pt |",
        f"| size | {base_m['size_bytes']:,} B | {final_m['size_bytes']:,} B | "
        f"{result['size_bytes']['ratio']:.1f}x smaller |",
        f"| p50 latency, 1 thread, batch 1 (ms) | {fmt(lat['baseline_fp32']['q1_median_q3'])} | "
        f"{fmt(lat['final']['q1_median_q3'])} | {fmt(result['speedup']['q1_median_q3'], 'x')} faster |",
        "",
        f"Speed-up per round ranged {result['speedup']['min']:.2f}x–{result['speedup']['max']:.2f}x; "
        f"baseline p50 ranged {lat['baseline_fp32']['min']:.3f}–{lat['baseline_fp32']['max']:.3f} ms, "
        f"final {lat['final']['min']:.3f}–{lat['final']['max']:.3f} ms over the rounds (the machine's noise).",
        "",
        f"Method: {result['method']}.",
        "",
        "Wall time: "
        + (f"fresh run {fresh_s:.0f} s; " if fresh_s else "")
        + f"rerun with nothing changed {rerun_s:.1f} s.",
        "Stage durations (s): " + ", ".join(f"{k} {v}" for k, v in result["stage_durations_s"].items()) + ".",
    ]
    (args.docs / "default_run.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
