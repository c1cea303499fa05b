"""Few-shot adaptation of a pruned ``edge_cnn``: plain fine-tuning vs Reptile vs first-order MAML.

MNIST-5k. The model is trained on digits 0-6 only, pruned (L1, half the channels, torch-pruning)
and recovered for one epoch, still on 0-6; digits 7-9 are never seen before the adaptation check.
Per seed: the pruned model is meta-trained (``edgeslim.train.meta``, the code of the ``meta_init``
stage) with Reptile (plain meta-step, ε 0.1) and with first-order MAML (Adam 1e-4) on 5-way 5-shot
episodes of 0-6 (5 query samples per class; ``--iterations`` meta-updates of ``--meta-batch``
tasks, ``--inner-steps`` SGD steps at ``--inner-lr``); then every method adapts to the same
``--tasks`` 3-way 5-shot episodes of 7-9 (support from the training split, 15 query samples per
class, a fresh zero head, plain SGD at each ``--adapt-lr``), and the query accuracy after
k = 1, 5, 20 steps is averaged over the episodes. ``finetune`` = the same SGD from
the pruned model without meta-init. Mean ± sd over seeds.

Writes docs/meta_init.md and docs/meta_init.json. Usage:
    .venv/bin/python bench/meta_init.py [--seeds 5] [--iterations 200] [--tasks 30]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslim.config.schema import DataSpec  # noqa: E402
from edgeslim.data.batches import TensorSplit  # noqa: E402
from edgeslim.data.datasets import load_data  # noqa: E402
from edgeslim.devices.edgeslim_bench import device_facts  # noqa: E402
from edgeslim.models.loader import output_layer_name  # noqa: E402
from edgeslim.models.zoo import build_model  # noqa: E402
from edgeslim.train.loop import TrainLoopConfig, evaluate, fit  # noqa: E402
from edgeslim.train.meta import EpisodeSampler, Functional, MetaSettings, adaptation_accuracy, meta_train  # noqa: E402

SEEN, HELD_OUT, KS = list(range(7)), [7, 8, 9], [1, 5, 20]


def only(split: TensorSplit, classes: list[int]) -> TensorSplit:
    x, y = split.tensors
    keep = torch.isin(y, torch.tensor(classes))
    return TensorSplit(x[keep], y[keep])


def pruned_model(data, seed: int) -> tuple[torch.nn.Module, dict[str, float]]:
    """edge_cnn trained on 0-6 (3 epochs), half its channels pruned (L1), one epoch of recovery."""
    import torch_pruning as tp

    train, val = only(data.train, SEEN), only(data.val, SEEN)
    torch.manual_seed(seed)
    model = build_model("edge_cnn", {}, 1, 10)
    fit(model, train, val, TrainLoopConfig(epochs=3, batch_size=64, optimizer={"lr": 3e-3}), seed=seed)
    trained = evaluate(model, only(data.test, SEEN))[0]
    example = data.example_batch(2)
    head = model.get_submodule(output_layer_name(model, example))
    pruner = tp.pruner.BasePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=[head]
    )
    pruner.step()
    pruned = evaluate(model, only(data.test, SEEN))[0]
    fit(model, train, val, TrainLoopConfig(epochs=1, batch_size=64, optimizer={"lr": 1e-3}), seed=seed)
    recovered = evaluate(model, only(data.test, SEEN))[0]
    return model, {"trained_0_6": trained, "pruned_0_6": pruned, "recovered_0_6": recovered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-list", type=int, nargs="+", help="run these seeds only (default: 0 .. seeds-1)")
    parser.add_argument("--log", type=Path, help="also append one JSON line per seed and method here")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--meta-batch", type=int, default=2)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--adapt-lr", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = load_data(DataSpec(name="mnist5k"))
    model, facts = pruned_model(data, 0)  # one pruned model; the seeds vary episodes and meta-training
    print(facts, flush=True)
    head = output_layer_name(model, data.example_batch(2))
    train = data.train
    inner = (args.inner_steps, args.inner_lr, args.meta_batch, args.iterations, "zero")
    methods = {
        "finetune": None,
        "reptile": (MetaSettings("reptile", *inner), "sgd", 0.1),
        "fomaml": (MetaSettings("fomaml", *inner), "adam", 1e-4),
    }
    cells = [(lr, k) for lr in args.adapt_lr for k in KS]
    per_seed: dict[str, dict[tuple[float, int], list[float]]] = {m: {c: [] for c in cells} for m in methods}
    cost: dict[str, list[float]] = {m: [] for m in methods}
    for seed in args.seed_list or range(args.seeds):
        for method, setup in methods.items():
            f = Functional.of(copy.deepcopy(model), head)
            started = time.perf_counter()
            if setup is not None:
                settings, opt, lr = setup
                sampler = EpisodeSampler(train.labels, SEEN, 5, 5, 5, 1000 + seed, "bench")
                torch.manual_seed(seed)

                def build(p, opt=opt, lr=lr):
                    return torch.optim.SGD(p, lr=lr) if opt == "sgd" else torch.optim.Adam(p, lr=lr)

                meta_train(f, train, sampler, settings, build)
            cost[method].append(time.perf_counter() - started)
            for lr in args.adapt_lr:
                check = EpisodeSampler(train.labels, HELD_OUT, 3, 5, 15, seed, "bench")  # same episodes for all
                acc = adaptation_accuracy(f, f.params(), train, check, KS, lr, args.tasks, "zero")
                for k in KS:
                    per_seed[method][(lr, k)].append(statistics.mean(acc[k]))
            print(seed, method, {c: round(v[-1] * 100, 1) for c, v in per_seed[method].items()}, flush=True)
            if args.log is not None:
                line = {"seed": seed, "method": method, "meta_train_s": cost[method][-1]}
                line["accuracy"] = [[lr, k, v[-1]] for (lr, k), v in per_seed[method].items()]
                with args.log.open("a") as fh:
                    fh.write(json.dumps(line) + "\n")

    rows = []
    for method in methods:
        for lr, k in cells:
            values = per_seed[method][(lr, k)]
            rows.append(
                {
                    "task": "mnist5k: edge_cnn trained on 0-6, pruned 50%; 3-way 5-shot on 7-9",
                    "method": method,
                    "k": k,
                    "adapt_lr": lr,
                    "seeds": args.seeds,
                    "accuracy_mean": statistics.mean(values),
                    "accuracy_sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "meta_train_s": statistics.mean(cost[method]),
                }
            )
    args.docs.mkdir(exist_ok=True)
    (args.docs / "meta_init.json").write_text(json.dumps(rows, indent=2) + "\n")
    meta = {"device": device_facts(), "model": facts, "args": vars(args) | {"docs": str(args.docs)}}
    (ROOT / "artifacts" / "meta_init_bench.json").parent.mkdir(exist_ok=True)
    (ROOT / "artifacts" / "meta_init_bench.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    lines = ["| method | adapt lr | k | accuracy (mean ± sd) | meta-train s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['adapt_lr']} | {r['k']} | {r['accuracy_mean'] * 100:.1f} ± "
            f"{r['accuracy_sd'] * 100:.1f}% | {r['meta_train_s']:.1f} |"
        )
    print("\n".join(lines))
    print(json.dumps(meta, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
