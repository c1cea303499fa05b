"""Fine-tuning ablation on the transformer task (issue 14 evidence): what each recipe buys on MiniLM.

The pretrained all-MiniLM-L6-v2 (a new, seeded 2-class head) is fine-tuned on the built-in
``rotten_tomatoes`` reviews under each option with one fixed budget (default 2 epochs, batch 32, no
early stopping), for several seeds:

1. plain AdamW (constant lr);
2. the research's BERT recipe: AdamW + linear warm-up over the first 10% of the steps, then linear decay
   to 0, gradient clipping at norm 1.0, layer-wise lr decay 0.8 (the head at the full rate);
3. the recipe + importance-scaled lr, ``protect`` (Fisher criterion, per layer, encoder only);
4. the recipe + importance-scaled lr, ``boost`` (the same scores, the other direction);
5. plain AdamW + layer-wise lr decay 0.8 alone.

Every run goes through ``edgeslim.run`` as a one-stage pipeline: a ``finetune`` stage straight from the
pretrained model. ``finetune`` rather than ``train`` because importance-scaled rates (``importance_lr``)
exist only in ``finetune`` (stages/finetune.py; ``train`` has the rest of the training engine); with no
distillation, QAT or new head configured, ``finetune`` is the same training loop as ``train``. Each
option/seed is its own run folder, so a rerun reuses every finished run (the stage cache) and an
interrupted ablation resumes; the per-run results are also saved after every run. Test accuracy is the
stage's PyTorch top-1 on the test split (``torch_test_accuracy`` in the run result).

Usage::

    nice -n 19 .venv/bin/python bench/finetune_ablation_text.py            # the real run -> docs/
    nice -n 19 .venv/bin/python bench/finetune_ablation_text.py --smoke    # a check of this script

``--smoke`` (and ``--max-samples``) writes its Markdown/JSON beside the runs, never into docs/, and prints
an estimate of the real run's wall time from its own timings.

Writes docs/finetune_ablation_text.md and docs/finetune_ablation_text.json (one object per option:
``option``, ``settings``, ``seeds``, ``accuracies``, ``accuracy_mean``, ``accuracy_sd``,
``delta_vs_plain_pt``, ``beyond_noise``, ``s_per_run``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_ablation import deep_merge  # noqa: E402  (the MNIST ablation's helper, unchanged)

DOC_NAME = "finetune_ablation_text"
MODEL = {"hf": "all-MiniLM-L6-v2", "task": "sequence-classification"}
DEFAULTS = {"epochs": 2, "max_length": 64, "seeds": [0, 1, 2], "lr": 5e-5}
SMOKE = {"max_samples": 120, "epochs": 1, "max_length": 32, "seeds": [0]}
BATCH = 32
LAYER_DECAY = 0.8
PLAIN = "plain AdamW"
RECIPE = "BERT recipe"
# the pretrained encoder (embeddings and blocks); the pooler and the new classifier keep the full rate
ENCODER = ["hf.bert.embeddings*", "hf.bert.encoder.*"]


def log(message: str) -> None:
    print(f"[ablation-text {time.strftime('%H:%M:%S')}] {message}", flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------- the options


def options(epochs: int, lr: float, criterion: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Option name -> (run-name slug, ``finetune`` settings), each complete (the base merged in)."""
    base = {
        "epochs": epochs,
        "batch_size": BATCH,
        "patience": None,  # fixed budget: no early stopping
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01},
        "schedule": {"name": "constant", "warmup_epochs": 0.0},
    }
    recipe = {
        "schedule": {"name": "linear", "warmup_epochs": round(0.1 * epochs, 6), "min_lr_ratio": 0.0},
        "grad_clip": 1.0,
        "layer_decay": LAYER_DECAY,
    }

    def importance(direction: str) -> dict[str, Any]:
        return {
            "importance_lr": {
                "criterion": criterion,
                "direction": direction,
                "granularity": "layer",
                "map": "sqrt",
                "min_scale": 0.5,
                "max_scale": 2.0,
                "layers": ENCODER,
                "calibration_samples": 256,
                "hutchinson_samples": 4,
            }
        }

    return {
        PLAIN: ("plain", base),
        RECIPE: ("recipe", deep_merge(base, recipe)),
        f"{RECIPE} + importance lr protect ({criterion})": (
            "recipe_protect",
            deep_merge(deep_merge(base, recipe), importance("protect")),
        ),
        f"{RECIPE} + importance lr boost ({criterion})": (
            "recipe_boost",
            deep_merge(deep_merge(base, recipe), importance("boost")),
        ),
        f"{PLAIN} + layer-wise lr decay {LAYER_DECAY}": ("layer_decay", deep_merge(base, {"layer_decay": LAYER_DECAY})),
    }


def run_config(name: str, seed: int, settings: dict[str, Any], max_length: int, max_samples: int | None) -> dict:
    data: dict[str, Any] = {"name": "rotten_tomatoes", "max_length": max_length}
    if max_samples is not None:
        data["max_samples"] = max_samples
    return {
        "name": name,
        "seed": seed,  # the new head's initialisation, the data order, dropout, the calibration draw
        "model": dict(MODEL),
        "data": data,  # the split itself is fixed (data.split_seed 0)
        # every stage's model is timed; keep that token-sized (latency is not what this ablation is about)
        "devices": [{"host": {"threads": [1], "batch_sizes": [1]}}],
        "measure": {"warmup": 0, "runs": 5, "max_seconds": 0.5, "eval_batch_size": 64},
        "stages": [{"finetune": settings}],
    }


# --------------------------------------------------------------------------------------------- timing


class Timings:
    """Seconds spent in the training loop and in importance scoring, per run: wraps the two functions
    the finetune stage calls (this process only; their results are untouched)."""

    def __init__(self) -> None:
        import edgeslim.stages.finetune as finetune

        self.current: dict[str, float] = {}
        for attr in ("fit", "parameter_importance"):
            original = getattr(finetune, attr)
            setattr(finetune, attr, self._timed(attr, original))

    def _timed(self, key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[key] = self.current.get(key, 0.0) + time.perf_counter() - start

        return wrapper


# --------------------------------------------------------------------------------------------- data facts


def data_facts(max_length: int, max_samples: int | None) -> dict[str, Any]:
    """Split sizes, and how many reviews the truncation to ``max_length`` tokens cuts."""
    from edgeslim.config.schema import DataSpec
    from edgeslim.data import text
    from edgeslim.data.datasets import load_data

    texts = text.rotten_tomatoes()
    lengths = text.tokenize(texts.texts, DataSpec(name="rotten_tomatoes", max_length=512)).mask.sum(1)
    spec = DataSpec(name="rotten_tomatoes", max_length=max_length, max_samples=max_samples)
    splits = load_data(spec)
    return {
        "texts": len(texts.texts),
        "longest_tokens": int(lengths.max()),
        "median_tokens": float(statistics.median(lengths.tolist())),
        "truncated": int((lengths > max_length).sum()),
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
    }


# --------------------------------------------------------------------------------------------- summary


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def beyond_noise(row: dict[str, Any], ref: dict[str, Any]) -> bool | None:
    """|Δ| larger than the seed-to-seed sd of both rows (None with a single seed: no sd to judge by)."""
    if row["seeds"] < 2 or ref["seeds"] < 2:
        return None
    delta = abs(row["accuracy_mean"] - ref["accuracy_mean"])
    return delta > row["accuracy_sd"] and delta > ref["accuracy_sd"]


def summarize(runs: list[dict[str, Any]], opts: dict[str, tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for option, (_, settings) in opts.items():
        done = [r for r in runs if r["option"] == option and r.get("accuracy") is not None]
        if not done:
            continue
        accs = [r["accuracy"] for r in done]
        rows.append(
            {
                "option": option,
                "settings": settings,
                "seeds": len(accs),
                "accuracies": accs,
                "accuracy_mean": statistics.mean(accs),
                "accuracy_sd": sd(accs),
                "s_per_run": statistics.mean(r["stage_s"] for r in done),
            }
        )
    plain = next((r for r in rows if r["option"] == PLAIN), None)
    for r in rows:
        r["delta_vs_plain_pt"] = (r["accuracy_mean"] - plain["accuracy_mean"]) * 100 if plain else None
        r["beyond_noise"] = None if plain is None or r is plain else beyond_noise(r, plain)
    keys = ("option", "settings", "seeds", "accuracies", "accuracy_mean", "accuracy_sd", "delta_vs_plain_pt")
    return [{k: r[k] for k in (*keys, "beyond_noise", "s_per_run")} for r in rows]


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """The honest sentences: do the options separate, and does importance scaling add to the recipe."""
    plain = next((r for r in rows if r["option"] == PLAIN), None)
    if plain is None or min(r["seeds"] for r in rows) < 2:
        return ["- Too few seeds to judge the noise: no conclusion."]
    others = [r for r in rows if r is not plain]
    separated = [r for r in others if r["beyond_noise"]]
    best = max(others, key=lambda r: r["accuracy_mean"])
    worst = min(others, key=lambda r: r["accuracy_mean"])
    if separated:
        parts = ", ".join(f"{r['option']} ({r['delta_vs_plain_pt']:+.2f} pt)" for r in separated)
        within = [r["option"] for r in others if not r["beyond_noise"]]
        rest = f"; within it: {', '.join(within)}" if within else ""
        lines = [f"- The options separate: beyond the seed-to-seed noise from plain AdamW: {parts}{rest}."]
    else:
        lines = [
            "- The options do not separate: no option's mean differs from plain AdamW by more than the "
            f"seed-to-seed sd of both (largest gain {best['option']} {best['delta_vs_plain_pt']:+.2f} pt, "
            f"largest loss {worst['option']} {worst['delta_vs_plain_pt']:+.2f} pt)."
        ]
    recipe = next((r for r in rows if r["option"] == RECIPE), None)
    if recipe is not None:
        for r in rows:
            if r["option"].startswith(f"{RECIPE} + "):
                delta = (r["accuracy_mean"] - recipe["accuracy_mean"]) * 100
                judged = beyond_noise(r, recipe)
                lines.append(
                    f"- {r['option']} vs the recipe alone: {delta:+.2f} pt "
                    f"({'beyond' if judged else 'within'} the noise)."
                )
    return lines


# --------------------------------------------------------------------------------------------- writing


def markdown(rows: list[dict[str, Any]], runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    dev, facts = meta["device"], meta["data"]
    lines = [
        "# Fine-tuning ablation on the transformer task (MiniLM, rotten_tomatoes)",
        "",
        f"Command: `{meta['command']}` ({meta['date']}; {meta['wall_s'] / 60:.0f} min wall time in this invocation, "
        f"{meta['compute_s'] / 60:.0f} min of stage time over all runs, reused runs included).",
        "",
        f"Machine: {dev.get('cpu')}, {dev.get('logical_cores')} logical cores, {dev.get('os')}, torch "
        f"{meta['torch']} (CPU), onnxruntime {dev.get('onnxruntime')}. A shared machine: other work loaded the "
        "cores, so the times are upper bounds.",
        "",
        "Setup: the pretrained sentence-transformers all-MiniLM-L6-v2 (22.7 M params, 6 blocks) with a new "
        "2-class head (pooler kept, a seeded linear classifier) fine-tuned on the built-in `rotten_tomatoes` "
        f"review snippets: {facts['train']} train / {facts['val']} val / {facts['test']} test (stratified, fixed "
        f"split), inputs `input_ids` and `attention_mask` padded/truncated to {meta['max_length']} tokens "
        f"(the longest review has {facts['longest_tokens']} tokens with [CLS]/[SEP], the median "
        f"{facts['median_tokens']:.0f}; {facts['truncated']} of {facts['texts']} reviews are cut). "
        f"Each run is a one-stage pipeline (`edgeslim.run`): a `finetune` stage from the pretrained model, "
        "because importance-scaled rates (`importance_lr`) exist only in `finetune`, not in `train`; with no "
        "distillation, QAT or head change, it is the same training loop as `train`. Fixed budget: "
        f"{meta['epochs']} epoch(s), batch {BATCH}, no early stopping (`patience: null`; as everywhere in the "
        "engine, the epoch with the best validation accuracy is the one kept), AdamW peak lr "
        f"{meta['lr']:g}, weight decay 0.01 (not on norms and biases), the model's dropout 0.1, the same lr for "
        "every option (not tuned per option). Seeds change the new head's initialisation, the data order, "
        "dropout and the importance calibration draw; the split stays. Accuracy: PyTorch top-1 on the "
        f"{facts['test']}-review test split, mean ± sample sd over {len(meta['seeds'])} seed(s) "
        f"({', '.join(map(str, meta['seeds']))}).",
        "",
        "Options (each one `finetune` stage's settings; exact values in the JSON):",
        "",
        f"- **{PLAIN}**: constant lr {meta['lr']:g}, no warm-up, no clipping.",
        f"- **{RECIPE}** (the research's recipe for BERT fine-tuning): linear warm-up over the first 10% of the "
        "steps, then linear decay to 0; gradient clipping at norm 1.0; layer-wise lr decay "
        f"{LAYER_DECAY} per block from the top (last block x{LAYER_DECAY}, first block "
        f"x{LAYER_DECAY**6:.2f}, embeddings x{LAYER_DECAY**7:.2f}; pooler and classifier at the full rate).",
        f"- **+ importance lr protect / boost**: the recipe, and each encoder layer's rate also scaled by its "
        f"{meta['criterion']} importance on 256 training samples (per layer, normalised to mean 1, square root, "
        "clipped to [0.5, 2]; `protect` divides, `boost` multiplies; the head is left at the full rate). The "
        "scores are taken on the pretrained encoder under the new, untrained head.",
        f"- **{PLAIN} + layer-wise lr decay {LAYER_DECAY}**: plain AdamW with only the layer-wise decay.",
        "",
        "| option | accuracy % (mean ± sd) | Δ vs plain (pt) | beyond noise? | s / run |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        judged = "" if r["option"] == PLAIN else {True: "yes", False: "no", None: "-"}[r["beyond_noise"]]
        delta = f"{r['delta_vs_plain_pt']:+.2f}" if r["delta_vs_plain_pt"] is not None else "-"
        lines.append(
            f"| {r['option']} | {r['accuracy_mean'] * 100:.2f} ± {r['accuracy_sd'] * 100:.2f} | {delta} | "
            f"{judged} | {r['s_per_run']:.0f} |"
        )
    lines += [
        "",
        "Beyond noise: |Δ| larger than the seed-to-seed sd of plain AdamW and of the option. s / run: the "
        "`finetune` stage's time (importance scoring, training, test evaluation, ONNX export and ONNX "
        "evaluation), mean over seeds.",
        "",
        "Findings:",
        "",
        *verdict(rows),
        "",
        "## Every run",
        "",
        "| option | seed | test accuracy (PyTorch) | test accuracy (ONNX) | best epoch | best val accuracy | "
        "s (stage) | s (training) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r.get("accuracy") is None:
            lines.append(f"| {r['option']} | {r['seed']} | failed: {r.get('error', '?')} | | | | | |")
            continue
        fit = f"{r['fit_s']:.0f}" if r.get("fit_s") is not None else "-"
        lines.append(
            f"| {r['option']} | {r['seed']} | {r['accuracy'] * 100:.2f} | {r['onnx_accuracy'] * 100:.2f} | "
            f"{r['best_epoch']} | {r['best_val_accuracy'] * 100:.2f} | {r['stage_s']:.0f} | {fit} |"
        )
    lines += ["", f"Run folders: `{meta['out']}/<run>/` (one per option and seed: {', '.join(meta['names'])})."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- estimate


def reference_epoch_s(report_file: Path, max_length: int) -> tuple[float, str] | None:
    """Seconds per epoch at ``max_length`` tokens from the ``train`` stage of a finished full-data MiniLM run
    on this machine (read only), scaled linearly from its sequence length; None when there is none."""
    try:
        report = json.loads(report_file.read_text())
        config = report["config"]
        stage = next(s for s in report["stages"] if s["name"] == "train" and s.get("duration_s"))
        train = next(e["train"] for e in config["stages"] if "train" in e)
        if config["data"].get("max_samples") is not None or config["data"]["name"] != "rotten_tomatoes":
            return None
        length, epochs = config["data"]["max_length"], train["epochs"]
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None
    per_epoch = stage["duration_s"] / epochs * max_length / length
    where = (
        f"{rel(report_file.parent)}'s train stage ({stage['duration_s']:.0f} s for {epochs} epochs at {length} "
        f"tokens, {report.get('created', '?')}, export and evaluation included)"
    )
    return per_epoch, where


def estimate(runs: list[dict[str, Any]], full: dict[str, Any], n_options: int, reference: Path) -> list[str]:
    """The real run's wall time from these runs' timings: training scaled by train samples x tokens x
    epochs, importance scoring by calibration samples x tokens, the rest (export, evaluation, loading)
    kept as measured (low by the larger evaluation, roughly 10-20 s a run). A tiny run's epoch is mostly
    fixed cost (first steps, state copies, evaluation), so scaling it is an upper bound; a finished
    full-data run's training time on this machine, when there is one, gives the second estimate."""
    timed = [r for r in runs if r.get("fit_s") is not None and r.get("accuracy") is not None]
    if not timed:
        return ["no freshly timed run to estimate from (all were reused): remove the run folders to time again"]
    per_run = []
    for r in timed:
        epoch_s = r["fit_s"] / r["epochs"]
        tokens = full["max_length"] / r["max_length"]
        train = epoch_s * (full["train"] / r["train"]) * tokens * full["epochs"]
        importance = r.get("importance_s", 0.0) * (min(256, full["train"]) / min(256, r["train"])) * tokens
        rest = r["wall_s"] - r["fit_s"] - r.get("importance_s", 0.0)
        per_run.append((train, importance, rest, epoch_s))
    train, importance, rest, epoch_s = (statistics.mean(v) for v in zip(*per_run, strict=True))
    n_runs = n_options * len(full["seeds"])
    lines = [
        f"from this run, scaled: {(train + importance + rest) * n_runs / 3600:.1f} h for {n_options} options x "
        f"{len(full['seeds'])} seeds (an upper bound). Per run: training {train:.0f} s = {epoch_s:.1f} s/epoch "
        f"here x {full['train']}/{timed[0]['train']} samples x {full['max_length']}/{timed[0]['max_length']} "
        f"tokens x {full['epochs']} epochs; importance scoring {importance:.0f} s (mean over all runs; only the "
        f"importance options score); the rest {rest:.0f} s as measured"
    ]
    ref = reference_epoch_s(reference, full["max_length"])
    if ref is not None:
        per_epoch, where = ref
        total = (per_epoch * full["epochs"] + importance + rest) * n_runs
        lines.append(
            f"from {where}: {per_epoch:.0f} s/epoch at {full['max_length']} tokens -> {total / 3600:.1f} h "
            "(same importance scoring and rest)"
        )
    lines.append("both on this machine under the load it had when timed; an idle machine is faster")
    return lines


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-samples", type=int, default=None, help="data.max_samples (stratified subset)")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULTS["seeds"])
    parser.add_argument(
        "--max-length", type=int, default=DEFAULTS["max_length"], help="tokens per review (the longest has 78)"
    )
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="AdamW peak learning rate, every option")
    parser.add_argument("--criterion", choices=["fisher", "hessian_trace"], default="fisher")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "artifacts" / DOC_NAME, help="runs go here")
    parser.add_argument("--docs-dir", type=Path, default=None, help="default: docs/ (reduced runs: OUT_DIR)")
    parser.add_argument(
        "--reference-run",
        type=Path,
        default=ROOT / "artifacts" / "minilm_sentiment",
        help="a finished full-data MiniLM run whose train stage calibrates the time estimate (only read)",
    )
    parser.add_argument("--smoke", action="store_true", help=f"a quick check of this script: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    reduced = args.smoke or args.max_samples is not None
    out_dir = args.out_dir.resolve()
    docs = (args.docs_dir or (out_dir if reduced else ROOT / "docs")).resolve()
    if reduced and docs == (ROOT / "docs").resolve():
        parser.error("a reduced run (--smoke, --max-samples) does not write docs/: give another --docs-dir")

    import torch

    import edgeslim
    from edgeslim.devices.edgeslim_bench import device_facts

    timings = Timings()
    tag = f"{f'n{args.max_samples}' if args.max_samples else 'all'}_len{args.max_length}_ep{args.epochs}_lr{args.lr:g}"
    opts = options(args.epochs, args.lr, args.criterion)
    log(f"data facts (max_length {args.max_length})")
    facts = data_facts(args.max_length, args.max_samples)
    log(
        f"{facts['train']}/{facts['val']}/{facts['test']} train/val/test; {facts['truncated']} of {facts['texts']} "
        f"reviews longer than {args.max_length} tokens (longest {facts['longest_tokens']})"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_file = out_dir / f"runs_{tag}.json"
    saved = {r["run"]: r for r in json.loads(progress_file.read_text())} if progress_file.is_file() else {}
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    device: dict[str, Any] | None = None
    for option, (slug, settings) in opts.items():
        for seed in args.seeds:
            name = f"fatext_{slug}_s{seed}_{tag}"
            config = edgeslim.parse_config(run_config(name, seed, settings, args.max_length, args.max_samples))
            log(f"{option} · seed {seed} -> {rel(out_dir / name)}")
            timings.current = {}
            t0 = time.perf_counter()
            record: dict[str, Any] = {"run": name, "option": option, "seed": seed}
            try:
                result = edgeslim.run(config, out=out_dir)
            except Exception as exc:  # UserError / StageFailed / a library failure: report it, go on
                record["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                log(f"failed: {record['error']}")
                runs.append(record)
                progress_file.write_text(json.dumps(list({**saved, **{r["run"]: r for r in runs}}.values()), indent=1))
                continue
            wall = time.perf_counter() - t0
            stage = result.stage("finetune")
            device = device or result.report.device
            d = stage.details or {}
            record.update(
                {
                    "status": stage.status,
                    "accuracy": d["torch_test_accuracy"],
                    "onnx_accuracy": stage.metrics.accuracy if stage.metrics else None,
                    "best_val_accuracy": d.get("best_val_accuracy"),
                    "best_epoch": d.get("best_epoch"),
                    "epochs_history": d.get("epochs"),
                    "stage_s": stage.duration_s,
                    "epochs": args.epochs,
                    "max_length": args.max_length,
                    "train": facts["train"],
                    "notes": list(stage.notes),
                }
            )
            if stage.status == "ran":
                record.update(
                    fit_s=timings.current.get("fit"),
                    importance_s=timings.current.get("parameter_importance", 0.0),
                    wall_s=wall,
                )
            elif name in saved:  # reused: keep the timings of the run that made it
                record.update({k: saved[name].get(k) for k in ("fit_s", "importance_s", "wall_s")})
            runs.append(record)
            progress_file.write_text(json.dumps(list({**saved, **{r["run"]: r for r in runs}}.values()), indent=1))
            fit = f", training {record['fit_s']:.0f} s" if record.get("fit_s") is not None else ""
            log(
                f"{stage.status}: test accuracy {record['accuracy']:.4f} (ONNX {record['onnx_accuracy']:.4f}), "
                f"best epoch {record['best_epoch']}, stage {record['stage_s']:.0f} s{fit}, wall {wall:.0f} s"
            )
    wall_s = time.perf_counter() - started
    rows = summarize(runs, opts)
    command = shlex.join(["nice", "-n", "19", ".venv/bin/python", rel(Path(sys.argv[0])), *sys.argv[1:]])
    meta = {
        "command": command,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "wall_s": wall_s,
        "compute_s": sum(r.get("stage_s") or 0.0 for r in runs),
        "device": device or device_facts(),
        "torch": torch.__version__,
        "data": facts,
        "max_length": args.max_length,
        "epochs": args.epochs,
        "lr": args.lr,
        "criterion": args.criterion,
        "seeds": args.seeds,
        "out": rel(out_dir),
        "names": sorted({r["run"].rsplit(f"_{tag}", 1)[0] for r in runs}),
    }
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{DOC_NAME}.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = markdown(rows, runs, meta)
    (docs / f"{DOC_NAME}.md").write_text(text)
    log(f"wrote {rel(docs / (DOC_NAME + '.md'))} and {rel(docs / (DOC_NAME + '.json'))}")
    print(text)
    if reduced:
        full = {**DEFAULTS, **data_facts(DEFAULTS["max_length"], None)}
        log("estimated wall time of the real run (defaults, all samples):")
        for line in estimate(runs, full, len(opts), args.reference_run / "report.json"):
            log(f"  {line}")
    return 1 if any(r.get("accuracy") is None for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
