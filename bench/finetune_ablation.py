"""Fine-tuning ablation: what each recovery technique buys after 50% channel pruning.

The default CNN is trained, evaluated and pruned to 50% channels (Hessian criterion) once,
through the pipeline itself (cached in artifacts/ablation_base). Then the finetune stage runs
from that pruned model under each option with a fixed epoch budget, for several seeds, with
and without QAT. Accuracy is PyTorch's on the MNIST-5k test split (for QAT: the fake-quant
model, which matches the exported INT8 model to about 0.1 pt). Results are saved after every
run, so an interrupted ablation resumes.

    .venv/bin/python bench/finetune_ablation.py [--epochs 2] [--seeds 0 1 2] [--qat off on] [--workers 2]

Writes docs/finetune_ablation.json and docs/finetune_ablation.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = {"epochs": 2, "batch_size": 128, "patience": None}  # fixed budget: no early stop
DISTILL = {"distill": {"teacher": "baseline", "temperature": 4.0, "alpha": 0.5}}


def options() -> dict[str, dict[str, Any]]:
    """Each option is plain AdamW + cosine plus one change (the combination comes later)."""
    opts: dict[str, dict[str, Any]] = {"plain AdamW + cosine": {}, "+ distillation": DISTILL}
    for criterion in ("weight_l1", "weight_l2", "grad_norm", "hessian_trace", "fisher"):
        for direction in ("boost", "protect"):
            opts[f"+ importance lr {direction} ({criterion})"] = {
                "importance_lr": {"criterion": criterion, "direction": direction, "hutchinson_samples": 4}
            }
    opts["+ layer-wise lr decay 0.8"] = {"layer_decay": 0.8}
    opts["schedule: constant"] = {"schedule": {"name": "constant"}}
    opts["schedule: step (gamma 0.5)"] = {"schedule": {"name": "step", "gamma": 0.5}}
    opts["schedule: exponential (gamma 0.5)"] = {"schedule": {"name": "exponential", "gamma": 0.5}}
    opts["schedule: plateau"] = {"schedule": {"name": "plateau", "gamma": 0.5}}
    opts["schedule: cosine + warm-up 0.5 epoch"] = {"schedule": {"name": "cosine", "warmup_epochs": 0.5}}
    opts["+ augmentation (shift 2 px, rotate 10°, scale 0.1)"] = {"augment": {"shift": 2, "rotate": 10, "scale": 0.1}}
    opts["+ label smoothing 0.1"] = {"loss": {"label_smoothing": 0.1}}
    return opts


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def base_run(out: Path) -> Path:
    """Train, evaluate and prune the default CNN through the pipeline (cached)."""
    from edgeslim.api import parse_config
    from edgeslim.engine.runner import Runner

    config = parse_config(
        {
            "name": "ablation_base",
            "seed": 0,
            "model": {"name": "edge_cnn"},
            "data": {"name": "mnist5k"},
            "stages": [
                {"train": {"epochs": 4}},
                "baseline",
                {"prune": {"importance": "hessian", "pruning_ratio": 0.5}},
            ],
        }
    )
    Runner(config, out).run()
    return out / "ablation_base"


def run_one(job: tuple[str, dict[str, Any], bool, int, str]) -> dict[str, Any]:
    """One fine-tuning run in a worker process."""
    import torch

    torch.set_num_threads(1)
    name, settings, qat, seed, run_dir = job
    from edgeslim.api import parse_config
    from edgeslim.data.datasets import load_data
    from edgeslim.engine.stage import StageContext
    from edgeslim.engine.store import Artifact
    from edgeslim.models.loader import ModelLoader

    finetune = deep_merge(deep_merge(BASE, settings), {"qat": qat})
    config = parse_config(
        {
            "name": "ablation",
            "seed": seed,
            "model": {"name": "edge_cnn"},
            "data": {"name": "mnist5k"},
            "stages": ["baseline", "prune", {"finetune": finetune}],
        }
    )
    data = load_data(config.data)
    loader = ModelLoader(config.model, data.input_shape[0], data.num_classes, data.example_batch(2))
    base = Path(run_dir)
    earlier = {0: Artifact.load(base / "01-baseline"), 1: Artifact.load(base / "02-prune")}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(config, 2, "stages[2].finetune", data, loader, earlier[1], Path(tmp), earlier)
        stage = config.stages[2].stage_class(config.stages[2].settings)
        start = time.perf_counter()
        result = stage.execute(ctx)
        seconds = time.perf_counter() - start
    return {
        "option": name,
        "qat": qat,
        "seed": seed,
        "accuracy": result.details["torch_test_accuracy"],
        "best_val_accuracy": result.details["best_val_accuracy"],
        "seconds": seconds,
    }


def summarize(runs: list[dict[str, Any]], settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for option, qat in dict.fromkeys((r["option"], r["qat"]) for r in runs):
        accs = [r["accuracy"] for r in runs if r["option"] == option and r["qat"] == qat]
        rows.append(
            {
                "option": option,
                "qat": qat,
                "seeds": len(accs),
                "accuracy_mean": statistics.mean(accs),
                "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "accuracies": accs,
                "seconds_mean": statistics.mean(
                    r["seconds"] for r in runs if r["option"] == option and r["qat"] == qat
                ),
                "settings": settings.get(option, {}),
            }
        )
    return rows


def best_combination(rows: list[dict[str, Any]], opts: dict[str, dict[str, Any]], qat: bool) -> dict[str, Any]:
    """Combine every single change whose mean beats plain by more than the plain run's sd (one per family)."""
    by = {r["option"]: r for r in rows if r["qat"] == qat}
    plain = by["plain AdamW + cosine"]
    margin = max(plain["accuracy_sd"], 0.001)
    families: dict[str, tuple[float, str]] = {}
    for option, row in by.items():
        if option not in opts or option == "plain AdamW + cosine":
            continue
        family = option.split(" (")[0].split(":")[0].replace(" boost", "").replace(" protect", "")
        gain = row["accuracy_mean"] - plain["accuracy_mean"]
        if gain > margin and gain > families.get(family, (-1.0, ""))[0]:
            families[family] = (gain, option)
    combo: dict[str, Any] = {}
    for _, option in families.values():
        combo = deep_merge(combo, opts[option])
    return combo


def beyond_noise(row: dict[str, Any], plain: dict[str, Any]) -> bool:
    """|Δ| > 2 standard errors of the difference of two means over the same number of seeds."""
    n = min(row["seeds"], plain["seeds"])
    if n < 2:
        return False
    se = ((row["accuracy_sd"] ** 2 + plain["accuracy_sd"] ** 2) / n) ** 0.5
    return abs(row["accuracy_mean"] - plain["accuracy_mean"]) > 2 * se


def write_docs(rows: list[dict[str, Any]], args: argparse.Namespace, docs: Path, seconds: float) -> None:
    from edgeslim.devices.edgeslim_bench import device_facts

    docs.mkdir(exist_ok=True)
    (docs / "finetune_ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    device = device_facts()
    lines = [
        "# Fine-tuning ablation after 50% channel pruning",
        "",
        f"Command: `.venv/bin/python bench/finetune_ablation.py --epochs {args.epochs} --seeds "
        f"{' '.join(map(str, args.seeds))} --qat {' '.join(args.qat)} --workers {args.workers}` "
        f"({seconds / 60:.0f} min on {device['cpu']}, {device['logical_cores']} cores, torch 2.13.0 CPU).",
        "",
        "Setup: the default CNN (`edge_cnn`, 1.79 M params) trained 4 epochs on MNIST-5k, pruned to 50% channels "
        "per layer with the Hessian (OBD) criterion, BatchNorm re-estimated; then `finetune` from that one pruned "
        f"model for a fixed budget of {args.epochs} epochs (batch 128, no early stopping), AdamW lr 1e-3, weight "
        "decay 1e-4, cosine schedule unless the row says otherwise. Each row changes one thing; the last row "
        "combines every change that beat the plain row by more than its seed-to-seed sd. Accuracy: PyTorch top-1 "
        "on the 1,001-image test split, mean ± sd over seeds (QAT rows: the fake-quantized model).",
        "",
        "| option | QAT | accuracy (mean ± sd) | Δ vs plain (pt) | beyond noise? | s / run |",
        "|---|---|---|---|---|---|",
    ]
    conclusions = []
    for qat in (False, True):
        mode = [r for r in rows if r["qat"] == qat]
        if not mode:
            continue
        plain = next(r for r in mode if r["option"] == "plain AdamW + cosine")
        for r in mode:
            delta = (r["accuracy_mean"] - plain["accuracy_mean"]) * 100
            verdict = "" if r is plain else ("yes" if beyond_noise(r, plain) else "no")
            lines.append(
                f"| {r['option']} | {'on' if qat else 'off'} | {r['accuracy_mean'] * 100:.2f} ± "
                f"{r['accuracy_sd'] * 100:.2f} | {delta:+.2f} | {verdict} | {r['seconds_mean']:.0f} |"
            )
        combo = next((r for r in mode if r["option"].startswith("best combination")), None)
        if combo is not None:
            chosen = json.dumps(combo["settings"]) if combo["settings"] else "nothing (no change passed the rule)"
            conclusions.append(f"- QAT {'on' if qat else 'off'}: the combination rule selected {chosen}.")
        singles = [r for r in mode if r is not plain and not r["option"].startswith("best combination")]
        top = max(singles, key=lambda r: r["accuracy_mean"])
        significant = [r["option"] for r in singles if beyond_noise(r, plain)]
        conclusions.append(
            f"- QAT {'on' if qat else 'off'}: largest mean gain: {top['option']} "
            f"({(top['accuracy_mean'] - plain['accuracy_mean']) * 100:+.2f} pt); beyond noise: "
            f"{', '.join(significant) if significant else 'none'}."
        )
    lines += [
        "",
        "Noise rule: a row is *beyond noise* when |Δ| exceeds twice the standard error of the difference of "
        "the two means, `2·sqrt((sd_a² + sd_b²) / seeds)` (about a 95% interval). The combination takes, per "
        "family, the best change whose gain exceeds the plain row's sd.",
        "",
        "Findings:",
        *conclusions,
    ]
    (docs / "finetune_ablation.md").write_text("\n".join(lines) + "\n")


def previous_minutes(docs: Path) -> float:
    """Wall time recorded by the run that produced the saved results (kept when only re-rendering)."""
    import re

    match = re.search(r"\((\d+) min on", (docs / "finetune_ablation.md").read_text())
    return float(match.group(1)) if match else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--qat", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--report-only", action="store_true", help="rewrite the docs from saved runs; train nothing")
    args = parser.parse_args()
    BASE["epochs"] = args.epochs
    started = time.perf_counter()
    progress_file = args.out / "ablation_runs.json"
    runs: list[dict[str, Any]] = json.loads(progress_file.read_text()) if progress_file.is_file() else []
    if args.report_only:
        opts = options()
        for qat in (False, True):
            if any(r["qat"] == qat for r in runs):
                opts["best combination" + (" (QAT)" if qat else "")] = best_combination(
                    summarize(runs, opts), options(), qat
                )
        write_docs(summarize(runs, opts), args, args.docs, previous_minutes(args.docs) * 60)
        return 0
    run_dir = base_run(args.out)
    done = {(r["option"], r["qat"], r["seed"]) for r in runs}
    opts = options()
    settings_of = dict(opts)

    def execute(jobs: list[tuple[str, dict[str, Any], bool, int, str]]) -> None:
        todo = [j for j in jobs if (j[0], j[2], j[3]) not in done]
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for result in pool.imap_unordered(run_one, todo):
                runs.append(result)
                progress_file.write_text(json.dumps(runs, indent=1))
                print(
                    f"{result['option']:<55} qat={result['qat']!s:<5} seed={result['seed']} "
                    f"acc={result['accuracy']:.4f} {result['seconds']:.0f}s",
                    flush=True,
                )

    for qat in [q == "on" for q in args.qat]:
        execute([(name, s, qat, seed, str(run_dir)) for name, s in opts.items() for seed in args.seeds])
        combo = best_combination(summarize(runs, settings_of), opts, qat)
        name = "best combination" + (" (QAT)" if qat else "")
        settings_of[name] = combo
        execute([(name, combo, qat, seed, str(run_dir)) for seed in args.seeds])
    rows = summarize(runs, settings_of)
    write_docs(rows, args, args.docs, time.perf_counter() - started)
    print((args.docs / "finetune_ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
