"""``edgeslim`` command line: run a config, re-render a report.

Exit codes: 0 success, 1 a stage failed a check it was asked to make, 2 bad input
(config, files, factories), 130 interrupted. User mistakes print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from pipeline.errors import StageFailed, UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeslim",
        description="Compress a trained PyTorch model for edge devices: prune, fine-tune, quantize, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the stages of a YAML config (resumes: unchanged stages are reused)",
        description="Run the pipeline described by CONFIG. Each stage writes <out>/<name>/<NN>-<stage>/; "
        "stages whose inputs and settings are unchanged are reused.",
    )
    run.add_argument("config", type=Path, help="YAML config (see configs/)")
    run.add_argument("--out", type=Path, default=Path("artifacts"), help="output root (default: artifacts)")
    run.add_argument("--force", action="store_true", help="re-run every stage even if its results are current")
    run.add_argument(
        "--from", dest="from_stage", metavar="STAGE", help="re-run from this stage (name or index) onwards"
    )
    report = sub.add_parser(
        "report",
        help="re-render report.md from a run's report.json",
        description="Re-render RUN_DIR/report.md from RUN_DIR/report.json and print the table.",
    )
    report.add_argument("run_dir", type=Path, help="a run folder, e.g. artifacts/mnist_cnn")
    return parser


def _stdout_console() -> Console:
    """Tables go to stdout; when it is not a terminal (logs, CI) do not squeeze them to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=140)


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from pipeline.config import load_config
    from pipeline.runner import Runner, print_summary

    config = load_config(args.config)
    runner = Runner(config, args.out, force=args.force, from_stage=args.from_stage, console=console)
    report = runner.run()
    print_summary(report, _stdout_console())
    console.print(f"report: {runner.run_dir / 'report.md'}")
    return 0


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from pipeline.artifacts import read_json
    from pipeline.report import rerender, rich_table

    path = rerender(args.run_dir)
    _stdout_console().print(rich_table(read_json(args.run_dir / "report.json")))
    console.print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TORCHDYNAMO_VERBOSE", "0")
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.command == "run":
            return _cmd_run(args, console)
        return _cmd_report(args, console)
    except (UserError, StageFailed) as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"edgeslim: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeslim: interrupted; finished stages are kept and a rerun resumes from there", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
