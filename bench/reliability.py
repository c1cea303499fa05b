"""The reliability tables behind docs/reliability.md.

* ``bad-inputs``: re-runs the catalogue in tests/bad_inputs/cases and writes the actual one-line
  error and exit code of each case to docs/reliability_bad_inputs.md.
* ``kills``: SIGKILLs a real run inside every stage at random points, ``--rounds`` times (a round
  kills once in each stage, resuming in between, then finishes), and checks each round's result
  against an uninterrupted run; writes docs/reliability_kills.{md,json}.

The pass/fail checks themselves live in the tests (tests/bad_inputs, tests/reliability). Usage::

    .venv/bin/python bench/reliability.py bad-inputs
    .venv/bin/python bench/reliability.py kills --rounds 5 [--seed 100]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeslim import cli  # noqa: E402
from edgeslim.engine.store import write_text  # noqa: E402
from tests.bad_inputs.test_bad_inputs import BASE_STAGES, CASES, load_case, run_case  # noqa: E402
from tests.conftest import small_config, write_config  # noqa: E402


def kills(rounds: int, seed: int) -> None:
    import json
    import random

    from tests.reliability import harness

    started = time.time()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = harness.write_run_config(root)
        code, stderr = harness.run(config, root / "reference")
        assert code == 0, stderr
        reference = harness.stage_outcomes(root / "reference")
        durations = [s["duration_s"] for s in json.loads((root / "reference/t/report.json").read_text())["stages"]]
        for r in range(rounds):
            rng = random.Random(seed + r)
            out = root / f"round{r}"
            for index, seconds in enumerate(durations):
                before = harness.stage_stamps(out) if (out / harness.RUN).is_dir() else {}
                kill = harness.kill_inside(config, out, index, delay_s=rng.uniform(0, 0.9 * seconds))
                after = harness.stage_stamps(out)
                redone = sorted(name for name in before if after.get(name) != before[name])
                results.append(
                    {
                        "round": r,
                        "stage": harness.STAGE_DIRS[index],
                        "delay_s": round(kill.delay_s, 3),
                        "stage_duration_s": seconds,
                        "landed_in": kill.landed,
                        "orphan_processes": len(kill.orphans),
                        "earlier_stages_redone": redone,
                    }
                )
                print(results[-1], flush=True)
            code, stderr = harness.run(config, out)
            resumed = harness.stage_outcomes(out) if code == 0 else []
            same = code == 0 and all(
                (a["accuracy"], a["model_sha256"], a["params"]) == (b["accuracy"], b["model_sha256"], b["params"])
                for a, b in zip(resumed, reference, strict=True)
            )
            problems = harness.folder_problems(out) if code == 0 else [f"final run failed: {stderr[-300:]}"]
            for row in results:
                if row["round"] == r:
                    row.update(final_exit=code, same_result_as_uninterrupted=same, folder_problems=problems)
            shutil.rmtree(out)
    total = time.time() - started
    write_text(ROOT / "docs" / "reliability_kills.json", json.dumps(results, indent=1) + "\n")
    aimed = sum(r["landed_in"] == f".{r['stage']}.partial" for r in results)
    ok = [
        not r["orphan_processes"]
        and not r["earlier_stages_redone"]
        and r["same_result_as_uninterrupted"]
        and not r["folder_problems"]
        for r in results
    ]
    lines = [
        "# SIGKILL inside every stage: what survived",
        "",
        f"Written by `.venv/bin/python bench/reliability.py kills --rounds {rounds} --seed {seed}` in {total:.0f} s "
        "on a 2-core machine. The run is tests/reliability/harness.py's pipeline (train, baseline, prune, finetune, "
        "export, quantize, benchmark on a digits slice). Each round starts empty, kills the run once inside each "
        "stage (a random delay after the stage's unfinished folder appears, up to 90% of that stage's duration in an "
        "uninterrupted run), resumes, and finally runs to the end.",
        "",
        f"**{sum(ok)} of {len(ok)} kills survived** ({aimed} landed inside the aimed stage; the others just after "
        "it, the 'landed in' column says where): no helper process "
        "outlived the run, no earlier stage was redone, the resumed result equals the uninterrupted run's "
        "(accuracy, params and model sha256 of every stage; tolerance 0), and no partial or unreferenced file "
        "was left.",
        "",
        "| round | stage | kill after (s) | stage takes (s) | landed in | orphans | earlier redone "
        "| final = uninterrupted | leftovers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['round']} | {row['stage']} | {row['delay_s']:.2f} | {row['stage_duration_s']:.2f} | "
            f"{row['landed_in']} | {row['orphan_processes']} | {', '.join(row['earlier_stages_redone']) or 'none'} "
            f"| {'yes' if row['same_result_as_uninterrupted'] else 'NO'} "
            f"| {', '.join(row['folder_problems']) or 'none'} |"
        )
    write_text(ROOT / "docs" / "reliability_kills.md", "\n".join(lines) + "\n")


def bad_inputs() -> None:
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        template = root / "template"
        base = write_config(root / "base.yaml", small_config(BASE_STAGES))
        assert cli.main(["run", str(base), "--out", str(template)]) == 0
        for path in CASES:
            case = load_case(path)
            outcome = run_case(case, template, root / path.stem)
            last = outcome.last_line
            intact = "yes" if outcome.earlier_run_intact and not outcome.leftovers else "NO"
            traceback = "NO" if "Traceback" in outcome.stderr else "yes"
            line = last.replace("|", "/")
            rows.append(f"| {path.stem} | {case['what']} | {outcome.code} | {traceback} | {intact} | `{line}` |")
            print(path.stem, outcome.code, last[:150], flush=True)
    lines = [
        "# Bad inputs: what the user sees",
        "",
        f"Written by `.venv/bin/python bench/reliability.py` in {time.time() - started:.0f} s; the assertions are in "
        "`tests/bad_inputs/test_bad_inputs.py` (one YAML file per case in `tests/bad_inputs/cases/`). Each case "
        "starts from a finished run (`baseline` on a digits slice) in the same output folder.",
        "",
        "| case | what | exit | no traceback | earlier run byte-identical | error line |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    write_text(ROOT / "docs" / "reliability_bad_inputs.md", "\n".join(lines) + "\n")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("bad-inputs")
    k = sub.add_parser("kills")
    k.add_argument("--rounds", type=int, default=5)
    k.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    if args.what == "kills":
        kills(args.rounds, args.seed)
    else:
        bad_inputs()


if __name__ == "__main__":
    main()
