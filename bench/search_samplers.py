"""How NSGA-II's first generation changes what a small search finds, over many seeds (issue 15).

A real compression search affords one seed per sampler (``bench/search.py``: ~15-60 min a model),
too few to tell samplers apart. This bench runs edgeslim's own study set-up (``make_sampler``,
``enqueue_start``, ``ask``, ``suggest``: the code ``edgeslim search`` runs) on cheap standard
bi-objective test problems instead of pipeline runs, at the trial budgets a compression search
affords (8, 16, 32), over 30 seeds, and compares the 2-D hypervolume of each search's front:

- ``random``: Optuna's random sampler;
- ``nsga2-before``: NSGA-II as edgeslim ran it before the change: the first generation drawn by
  Optuna's random sampler, the default trial outside NSGA-II's population (``initial: random`` and a
  plain ``study.ask()``);
- ``nsga2-lhs``: NSGA-II now: the default plus a Latin hypercube as its first generation, every
  trial placed in a generation (``initial: lhs``, ``ask``);
- ``tpe``: Optuna's multi-objective TPE (4 random startup trials), edgeslim's default sampler now;
- ``tpe-lhs``: the same with its startup trials as a Latin hypercube (measured, not adopted).

Each search starts with the same default trial (the middle of the space), as ``edgeslim search``
starts with the config's own settings. Problems: ZDT1 and ZDT2 (Zitzler, Deb, Thiele 2000) with 3
variables, continuous, and a mixed variant whose 2nd and 3rd variables are choices of 3 values
(like a search over ``pruning_ratio`` x ``importance`` x ``round_to``). Both objectives minimized;
hypervolume against the reference (1.1, 11), normalized to [0, 1].

    .venv/bin/python bench/search_samplers.py      # ~1 min; writes docs/search_samplers.md/json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from edgeslim.study.search import ask, enqueue_start, initial_params, make_sampler, suggest
from edgeslim.study.space import parse_search

ROOT = Path(__file__).resolve().parents[1]
REF = (1.1, 11.0)
CONTINUOUS = {"x1": {"low": 0.0, "high": 1.0}, "x2": {"low": 0.0, "high": 1.0}, "x3": {"low": 0.0, "high": 1.0}}
MIXED = {"x1": {"low": 0.0, "high": 1.0}, "x2": [0.0, 0.5, 1.0], "x3": [0.0, 0.5, 1.0]}
DEFAULT = {"x1": 0.5, "x2": 0.5, "x3": 0.5}
VARIANTS = ("random", "nsga2-before", "nsga2-lhs", "tpe", "tpe-lhs")


def zdt(x: list[float], shape: Callable[[float], float]) -> tuple[float, float]:
    f1 = x[0]
    g = 1 + 9 * sum(x[1:]) / (len(x) - 1)
    return f1, g * shape(f1 / g)


PROBLEMS: dict[str, tuple[dict[str, Any], Callable[[float], float]]] = {
    "zdt1": (CONTINUOUS, lambda r: 1 - math.sqrt(r)),
    "zdt2": (CONTINUOUS, lambda r: 1 - r * r),
    "zdt1-mixed": (MIXED, lambda r: 1 - math.sqrt(r)),
}


def hypervolume(points: list[tuple[float, float]]) -> float:
    """2-D hypervolume of minimized points against REF, normalized by the reference box."""
    pts = sorted(p for p in points if p[0] < REF[0] and p[1] < REF[1])
    volume, best = 0.0, REF[1]
    for i, (f1, f2) in enumerate(pts):
        best = min(best, f2)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else REF[0]
        volume += (nxt - f1) * (REF[1] - best)
    return volume / (REF[0] * REF[1])


def one_search(problem: str, variant: str, trials: int, seed: int, population: int) -> float:
    space, shape = PROBLEMS[problem]
    sampler = variant.split("-")[0]
    initial = "random" if variant.endswith("before") else "lhs"
    cfg = parse_search(
        {
            "space": space,
            "objectives": {"accuracy": "min", "latency_ms": "min"},  # names only: both values are minimized
            "sampler": sampler,
            "population_size": population,
            "initial": initial,
            "seed": seed,
            "trials": trials,
        }
    )
    study = optuna.create_study(directions=cfg.directions, sampler=make_sampler(cfg, seed))
    enqueue_start(study, cfg, dict(DEFAULT))
    if variant == "tpe-lhs":  # measured, not adopted: TPE's startup trials as a Latin hypercube
        for params in initial_params(cfg, cfg.startup_trials - 1):
            study.enqueue_trial(params)
    values = []
    for _ in range(trials):
        trial = study.ask() if variant == "nsga2-before" else ask(study)
        params = suggest(trial, cfg)
        value = zdt([float(params[k]) for k in ("x1", "x2", "x3")], shape)
        study.tell(trial, value)
        values.append(value)
    return hypervolume(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--populations", type=int, nargs="+", default=[4, 8], help="NSGA-II population sizes")
    parser.add_argument("--docs-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.perf_counter()
    variants = VARIANTS
    rows = []
    for population, problem, budget in itertools.product(args.populations, PROBLEMS, args.budgets):
        if True:
            hv = {v: [one_search(problem, v, budget, s, population) for s in range(args.seeds)] for v in variants}
            row: dict[str, Any] = {"problem": problem, "trials": budget, "seeds": args.seeds, "population": population}
            for v in variants:
                row[v] = {"mean": statistics.mean(hv[v]), "sd": statistics.stdev(hv[v])}
            for v in variants[1:]:  # paired by seed: the same default, the same seed
                row[v]["wins_vs_random"] = sum(a > b for a, b in zip(hv[v], hv["random"], strict=True))
            rows.append(row)
            print(population, problem, budget, {v: round(row[v]["mean"], 4) for v in variants}, flush=True)
    _write(args, rows, time.perf_counter() - started)
    return 0


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], wall_s: float) -> None:
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    (args.docs_dir / "search_samplers.json").write_text(json.dumps(rows, indent=2) + "\n")
    shown = " ".join(str(b) for b in args.budgets)
    lines = [
        "# Samplers and first generations on compression-search budgets (issue 15)",
        "",
        f"Written by `bench/search_samplers.py` ({datetime.date.today()}, {wall_s:.0f} s): `.venv/bin/python "
        f"bench/search_samplers.py --seeds {args.seeds} --budgets {shown} --populations "
        + " ".join(str(p) for p in args.populations)
        + "`.",
        "",
        "edgeslim's own study set-up (the default trial first, `make_sampler`, `enqueue_start`, `ask`, `suggest`) "
        "on cheap standard test problems instead of pipeline runs, so that many seeds fit. Cell: hypervolume of the "
        f"search's trials (normalized; higher is better), mean ± sd over {args.seeds} seeds, and in brackets the "
        "seeds on which it is above random search's (paired: same seed, same default trial). `nsga2-before`: the "
        "first generation drawn by Optuna's random sampler, the default trial outside NSGA-II's population "
        "(edgeslim before this change); `nsga2-lhs`: the default plus a Latin hypercube, every trial in an NSGA-II "
        "generation (now, `initial: lhs`); `tpe`: Optuna's multi-objective TPE, 4 random startup trials "
        "(edgeslim's default sampler now); `tpe-lhs`: its startup trials a Latin hypercube (not adopted). The TPE "
        "columns do not depend on the NSGA-II population.",
        "",
    ]
    for population in args.populations:
        lines += [
            f"## NSGA-II population {population}",
            "",
            "| problem | trials | " + " | ".join(VARIANTS) + " |",
            "|---|---:|" + "---:|" * len(VARIANTS),
        ]
        for r in (r for r in rows if r["population"] == population):
            cells = [f"{r['random']['mean']:.3f} ± {r['random']['sd']:.3f}"]
            for v in VARIANTS[1:]:
                cells.append(f"{r[v]['mean']:.3f} ± {r[v]['sd']:.3f} ({r[v]['wins_vs_random']})")
            lines.append(f"| {r['problem']} | {r['trials']} | " + " | ".join(cells) + " |")
        lines.append("")
    (args.docs_dir / "search_samplers.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
