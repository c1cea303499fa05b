"""Wall time of the training stages with 1 vs N processes (``edgeslim run --nproc N``).

Two cases, each run from scratch once per process count, alternating the order between cases:

* ``edge_cnn`` on MNIST-5k: the default pipeline's train → baseline → prune (hessian, 0.5) →
  finetune (QAT + distillation), 4 epochs each;
* MiniLM (the pretrained all-MiniLM-L6-v2 with a new head) on Rotten Tomatoes at 64 tokens:
  baseline → finetune (1 epoch, AdamW), on ``--text-samples`` snippets.

Latency is measured by the runs as always, but briefly (it is not what this page is about). The
stage times are the runner's own (``metrics.json`` ``duration_s``: training plus its evaluation).

Writes docs/scale.md and docs/scale.json. Usage:
    .venv/bin/python bench/scale.py [--nproc 1 2] [--text-samples 1600]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslim.devices.edgeslim_bench import device_facts  # noqa: E402

MEASURE = {"warmup": 5, "runs": 30, "max_seconds": 1.0}
HOST = [{"host": {"threads": [1], "batch_sizes": [1]}}]


def edge_cnn() -> dict[str, Any]:
    return {
        "name": "scale_edge_cnn",
        "seed": 0,
        "model": {"name": "edge_cnn"},
        "data": {"name": "mnist5k"},
        "devices": HOST,
        "measure": MEASURE,
        "stages": [
            {"train": {"epochs": 4}},
            {"baseline": {}},
            {"prune": {"importance": "hessian", "pruning_ratio": 0.5}},
            {"finetune": {"epochs": 4, "qat": True, "distill": {"teacher": "baseline", "temperature": 4.0}}},
        ],
    }


def minilm(samples: int) -> dict[str, Any]:
    return {
        "name": "scale_minilm",
        "seed": 0,
        "model": {"hf": "all-MiniLM-L6-v2", "task": "sequence-classification"},
        "data": {"name": "rotten_tomatoes", "max_length": 64, "max_samples": samples},
        "devices": HOST,
        "measure": {**MEASURE, "eval_batch_size": 64},
        "stages": [
            {"baseline": {}},
            {
                "finetune": {
                    "epochs": 1,
                    "batch_size": 32,
                    "optimizer": {"name": "adamw", "lr": 1.0e-4, "weight_decay": 0.01},
                    "schedule": {"name": "cosine", "warmup_epochs": 0.2, "min_lr_ratio": 0.0},
                    "patience": None,
                }
            },
        ],
    }


def run(config: dict[str, Any], nproc: int, work: Path) -> dict[str, Any]:
    """One fresh run with ``nproc`` processes; the training stages' times and accuracies."""
    out = work / f"nproc{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv/bin/edgeslim"), "run", str(path), "--out", str(out), "--nproc", str(nproc)],
        check=True,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = time.perf_counter() - start
    report = json.loads((out / config["name"] / "report.json").read_text())
    stages = {}
    for stage in report["stages"]:
        if stage["name"] not in ("train", "finetune"):
            continue
        metrics = json.loads((out / config["name"] / stage["dir"] / "metrics.json").read_text())
        history = metrics["details"].get("epochs", [])
        stages[stage["name"]] = {
            "wall_s": metrics["duration_s"],
            "val_accuracy": stage["metrics"]["val_accuracy"],
            "test_accuracy": stage["metrics"]["accuracy"],
            "epochs": len(history),
        }
    return {"run_wall_s": round(total, 1), "stages": stages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--text-samples", type=int, default=1600)
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "scale_bench")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    cases = {"edge_cnn": edge_cnn(), "minilm": minilm(args.text_samples)}
    rows = []
    for i, (model, config) in enumerate(cases.items()):
        order = args.nproc if i % 2 == 0 else list(reversed(args.nproc))
        for nproc in order:
            print(f"{model}: --nproc {nproc}", flush=True)
            result = run(config, nproc, args.work / model)
            for stage, numbers in result["stages"].items():
                rows.append(
                    {
                        "model": model,
                        "stage": stage,
                        "nproc": nproc,
                        "threads_per_process": max(1, (os.cpu_count() or 1) // nproc),
                        **numbers,
                        "run_wall_s": result["run_wall_s"],
                    }
                )
                print(f"  {stage}: {numbers}", flush=True)
    facts = device_facts()
    payload = {"device": facts, "cpus": os.cpu_count(), "text_samples": args.text_samples, "results": rows}
    args.docs.mkdir(exist_ok=True)
    (args.docs / "scale.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "| model | stage | processes | threads each | stage wall s | val acc | test acc |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['stage']} | {r['nproc']} | {r['threads_per_process']} | {r['wall_s']:.1f} | "
            f"{r['val_accuracy'] * 100:.2f}% | {r['test_accuracy'] * 100:.2f}% |"
        )
    print("\n".join(lines))
    (args.work / "table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
