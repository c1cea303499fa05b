"""Which channel multiples pay on this CPU, and what ``prune: {round_to: auto}`` buys (issue 15, item 3).

For each model and pruning ratio, three runs of ``baseline -> prune`` through ``edgeslim.run`` (l1 criterion,
per-layer ratio): ``round_to`` 1 (unrounded), ``auto`` (the stage times the model pruned at multiples 1, 4,
8 and 16 side by side and keeps the one that spends clearly less time per MAC; ``edgeslim.prune.multiples``).
Then the baseline, the unrounded and the auto-rounded models are timed again side by side here (interleaved
rounds, 1 thread, batch 1, the host profile). Weights are the architectures' random initialization: latency
does not depend on the values, and no training is needed to see where the kernels are fast (accuracy is not
reported here; the zoo and search benches train).

Usage::

    nice -n 19 .venv/bin/python bench/multiples.py [--models resnet18 mobilenet_v3_small edge_cnn]

Writes docs/multiples.md and docs/multiples.json (a list: one object per model and ratio).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {"name": "resnet18", "kwargs": {"width_mult": 0.5, "small_input": True}},
    "mobilenet_v3_small": {"name": "mobilenet_v3_small", "kwargs": {"width_mult": 1.0, "small_input": True}},
    "efficientnet_b0": {"name": "efficientnet_b0", "kwargs": {"width_mult": 0.5, "small_input": True}},
    "edge_cnn": {"name": "edge_cnn"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small", "edge_cnn"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.4, 0.5])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "artifacts" / "multiples_bench")
    parser.add_argument("--docs-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    from edgeslim.api import parse_config, run
    from edgeslim.config.schema import MeasureSpec
    from edgeslim.data.datasets import load_data
    from edgeslim.devices.edgeslim_bench import device_facts
    from edgeslim.engine.measure import measure_side_by_side
    from edgeslim.engine.stats import DEFAULT_CONFIDENCE, median_interval

    started = time.perf_counter()
    rows = []
    for model in args.models:
        data = {"name": "mnist5k", "max_samples": 1000}
        if model != "edge_cnn":
            data["image_size"] = 32
        for ratio in args.ratios:
            results = {}
            for round_to in (1, "auto"):
                cfg = {
                    "name": f"{model}_r{ratio}_round{round_to}",
                    "seed": 0,
                    "model": MODELS[model],
                    "data": data,
                    "devices": [{"host": {"threads": [1], "batch_sizes": [1]}}],
                    "measure": {"warmup": 10, "runs": 100, "max_seconds": 2.0},
                    "stages": [
                        "baseline",
                        {"prune": {"importance": "l1", "pruning_ratio": ratio, "round_to": round_to}},
                    ],
                }
                results[round_to] = run(cfg, args.out_dir)
            auto = results["auto"].stage("prune").details
            files = [
                results[1].model_file("baseline"),
                results[1].model_file("prune"),
                results["auto"].model_file("prune"),
            ]
            config = parse_config(cfg)
            spec = MeasureSpec(warmup=20, runs=300, max_seconds=15.0)
            timed = measure_side_by_side(files, config.host, spec, load_data(config.data))
            samples = [np.asarray(t["latency_samples_ms"]) for t in timed]
            p50 = [float(np.median(s)) for s in samples]
            row = {
                "model": model,
                "ratio": ratio,
                "chosen_multiple": auto["round_to_auto"]["chosen"],
                "stage_table": auto["round_to_auto"]["measured"],
                "latency_ms_p50": {"baseline": p50[0], "round_to_1": p50[1], "round_to_auto": p50[2]},
                "latency_ms_p50_ci": {
                    k: median_interval(s, DEFAULT_CONFIDENCE)
                    for k, s in zip(("baseline", "round_to_1", "round_to_auto"), samples, strict=True)
                },
                "params": {
                    "baseline": results[1].stage("prune").details["params_before"],
                    "round_to_1": results[1].stage("prune").details["params_after"],
                    "round_to_auto": auto["params_after"],
                },
                "speedup_vs_baseline": {"round_to_1": p50[0] / p50[1], "round_to_auto": p50[0] / p50[2]},
                "auto_vs_round_to_1": p50[1] / p50[2],
            }
            rows.append(row)
            write(args, rows, device_facts(), time.perf_counter() - started)
            print(f"{model} r={ratio}: chose {row['chosen_multiple']}, {row['speedup_vs_baseline']}", flush=True)
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]], device: dict[str, Any], wall: float) -> None:
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    (args.docs_dir / "multiples.json").write_text(json.dumps(rows, indent=2) + "\n")
    cmd = " ".join(["nice -n 19 .venv/bin/python bench/multiples.py", *sys.argv[1:]])
    lines = [
        "# Which channel multiples pay on this CPU: `prune: {round_to: auto}`",
        "",
        f"Written by `bench/multiples.py` on {datetime.date.today()} ({wall:.0f} s): `{cmd}`",
        "",
        f"Machine: {device.get('cpu', '?')}, {device.get('logical_cores', '?')} logical cores, shared; ONNX Runtime "
        "CPU, 1 thread, batch 1, real MNIST images (32x32 for the zoo models).",
        "",
        "Each model is pruned uniformly (l1, per layer) at the ratio, unrounded and with `round_to: auto`: the prune "
        "stage times the model pruned at multiples 1, 4, 8 and 16 side by side and keeps the smallest multiple that "
        "spends at least 5% less time per MAC than the unrounded one (`edgeslim.prune.multiples`; torch-pruning "
        "rounds kept counts down, so a multiple also removes work: time per MAC separates layout from work). Then "
        "the baseline and both pruned models of each row were timed again side by side (300 runs each, "
        "interleaved). Random-init weights: "
        "latency only.",
        "",
        "| model | ratio | multiple chosen | stage's time/MAC by multiple (vs 1) | params: baseline / round 1 / auto "
        "| p50 ms: baseline / round 1 / auto | speed-up vs baseline: round 1 / auto | auto vs round 1 |",
        "|---|---:|---:|---|---|---|---|---:|",
    ]
    for r in rows:
        base = r["stage_table"]["1"]["ms_per_gmac"]
        per_mac = ", ".join(f"{m}: {v['ms_per_gmac'] / base:.2f}" for m, v in r["stage_table"].items())
        p, lat, s = r["params"], r["latency_ms_p50"], r["speedup_vs_baseline"]
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['chosen_multiple']} | {per_mac} "
            f"| {p['baseline']:,} / {p['round_to_1']:,} / {p['round_to_auto']:,} "
            f"| {lat['baseline']:.4g} / {lat['round_to_1']:.4g} / {lat['round_to_auto']:.4g} "
            f"| {s['round_to_1']:.2f}x / {s['round_to_auto']:.2f}x | {r['auto_vs_round_to_1']:.2f}x |"
        )
    lines += [
        "",
        "95% bootstrap intervals of each p50 are in docs/multiples.json (`latency_ms_p50_ci`).",
    ]
    (args.docs_dir / "multiples.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
