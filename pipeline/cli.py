"""``edgeslim`` command line: run a config, re-render a report.

Exit codes: 0 success, 1 a stage failed a check it was asked to make, 2 bad input
(config, files, factories) or an unusable environment (full disk, read-only output),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM). User mistakes print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console

from edgeslim.errors import StageFailed, UserError

# Failures of the machine around the run (full disk, read-only or unwritable folders), not bugs: one line, exit 2.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EMFILE}


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
    run.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train data-parallel in N processes on this machine (torchrun, DistributedDataParallel; gloo on CPU, "
        "NCCL on GPU); batch_size stays the global batch. Across machines, start torchrun yourself: "
        "docs/scale.md",
    )
    report = sub.add_parser(
        "report",
        help="re-render report.md from a run's report.json",
        description="Re-render RUN_DIR/report.md from RUN_DIR/report.json and print the table.",
    )
    report.add_argument("run_dir", type=Path, help="a run folder, e.g. artifacts/mnist_cnn")
    _add_compare(sub)
    _add_search(sub)
    return parser


def _add_search(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser(
        "search",
        help="search pruning / fine-tuning / quantization settings (Optuna: TPE, NSGA-II, CMA-ES, random)",
        description="Run (or resume) the search a config's search: block describes: each trial is an ordinary "
        "cached run under <out>/<name>/trials/; the study (default <out>/<name>/study.db) outlives the process. "
        "Writes search.md, search.html (Pareto front) and search.json in <out>/<name>/.",
    )
    search.add_argument("config", type=Path, help="YAML config with a search: block (see configs/search_digits.yaml)")
    search.add_argument("--out", type=Path, default=Path("artifacts"), help="output root (default: artifacts)")
    search.add_argument(
        "--storage",
        metavar="URL",
        help="a study shared by several machines: an SQLAlchemy URL such as postgresql://user:pw@host/db "
        "(default: a SQLite file in the search folder)",
    )
    search.add_argument(
        "--worker",
        action="store_true",
        help="one of several processes adding trials to one study (its own random stream; same budget)",
    )
    search.add_argument(
        "--export-best",
        action="store_true",
        help="do not search: write the chosen trial's settings as a plain runnable config (<out>/<name>/best.yaml)",
    )
    search.add_argument(
        "--max-drop",
        type=float,
        metavar="PT",
        help="with --export-best: at most this many points of validation accuracy below the trial's baseline",
    )
    search.add_argument("--to", type=Path, metavar="FILE", help="with --export-best: where to write the config")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    import textwrap

    from edgeslim.reports.compare import DEFAULT_CONFIDENCE, DEFAULT_MIN_EFFECT, noise_rule

    what = (
        "Compare models across latency reports (edgeslim.latency-report/1, e.g. written by edgeslim_bench.py on a "
        "device) and run folders (every measured stage, plus the benchmark stage's per-device reports). Prints a "
        "table of size, p50/p90/p99, speed-up against the baseline, Δ accuracy and a verdict per model and device."
    )
    rule = noise_rule(DEFAULT_CONFIDENCE, DEFAULT_MIN_EFFECT)
    warnings = (
        "Warnings are printed when compared entries differ in input shape or batch size, when one device label "
        "was measured on different CPUs or ONNX Runtime versions, and when one model label names files with "
        "different sha256s."
    )
    compare = sub.add_parser(
        "compare",
        help="compare latency reports and run folders: speed-ups, noise verdicts, HTML/Markdown report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(textwrap.fill(text, 100) for text in (what, rule, warnings)),
    )
    compare.add_argument(
        "inputs", type=Path, nargs="+", metavar="REPORT_OR_RUN", help="latency report JSON files and/or run folders"
    )
    compare.add_argument(
        "--baseline",
        metavar="MODEL",
        help="baseline model label (exact or unique substring); default: a run's baseline stage, else the first model",
    )
    compare.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained offline HTML report")
    compare.add_argument("--markdown", type=Path, metavar="FILE", help="write the comparison as Markdown")
    compare.add_argument(
        "--min-effect",
        type=float,
        default=DEFAULT_MIN_EFFECT,
        help=f"smallest speed-up or slow-down worth flagging, as a fraction (default {DEFAULT_MIN_EFFECT})",
    )
    compare.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        help=f"confidence level of the bootstrap interval (default {DEFAULT_CONFIDENCE})",
    )


def _stdout_console() -> Console:
    """Tables go to stdout; when it is not a terminal (logs, CI) do not squeeze them to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=140)


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from edgeslim import api
    from edgeslim.engine import distributed
    from edgeslim.models.zoo import factory_search_path
    from edgeslim.reports.run_report import rich_table

    if args.nproc < 1:
        raise UserError(f"run: --nproc must be at least 1 (got {args.nproc})")
    launched = distributed.launched()
    # package.module:factory refs are found beside the config first, then in the current folder (README)
    with factory_search_path([args.config.parent, Path.cwd()]):
        if args.nproc > 1 and launched.size == 1:
            from edgeslim.launch import launch

            return launch(args, console)
        result = api.run(args.config, args.out, force=args.force, from_stage=args.from_stage, console=console)
    if launched.writer:  # under torchrun, rank 0 reports; the other ranks trained with it
        _stdout_console().print(rich_table(result.report))
        console.print(f"report: {result.report_md}")
    return 0


def _cmd_search(args: argparse.Namespace, console: Console) -> int:
    from edgeslim.models.zoo import factory_search_path
    from edgeslim.study import search as searching

    if args.export_best:
        setup = searching.read_setup(args.config)
        path, best = searching.export_best(args.out / setup.name, max_drop_pt=args.max_drop, to=args.to)
        console.print(f"trial {best.number}: {best.params}")
        console.print(f"config: {path}")
        return 0
    if args.max_drop is not None or args.to is not None:
        raise UserError("search: --max-drop and --to go with --export-best")
    with factory_search_path([args.config.parent, Path.cwd()]):
        result = searching.search(args.config, args.out, storage=args.storage, worker=args.worker, console=console)
    console.print(f"report: {result.search_dir / 'search.md'}")
    return 0


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from edgeslim import api
    from edgeslim.reports.run_report import rerender, rich_table

    path = rerender(args.run_dir)
    _stdout_console().print(rich_table(api.open_run(args.run_dir).report))
    console.print(f"report: {path}")
    return 0


def _cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from rich.markup import escape

    from edgeslim.engine.store import write_text
    from edgeslim.reports.compare import compare, load_entries, rich_tables, to_markdown
    from edgeslim.reports.html import write_html

    problems: list[str] = []
    entries = load_entries(args.inputs, problems)
    comparison = compare(entries, args.baseline, args.min_effect, args.confidence, extra_warnings=problems)
    out = _stdout_console()
    for table in rich_tables(comparison):
        out.print(table)
    for warning in comparison.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    outputs = []
    if args.markdown:
        outputs.append(("markdown", args.markdown, lambda: write_text(args.markdown, to_markdown(comparison))))
    if args.html:
        outputs.append(("html", args.html, lambda: write_html(comparison, args.html)))
    for kind, path, write in outputs:
        try:
            write()
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        console.print(f"{kind}: {path}")
    return 0


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the unfinished stage is cleaned up like on Ctrl-C."""


_signals: list[int] = []  # received this run: a stop request wins over whatever error it caused


def _on_signal(signum: int, frame: object) -> None:
    """Ctrl-C / SIGTERM: raise in the main thread so the unfinished stage is discarded. Inside a native
    library (safetensors' Rust reader) the exception can come back as an unrelated error, such as a
    ``ValueError``; the recorded signal still decides the exit."""
    _signals.append(signum)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _stopped(signum: int) -> int:
    if signum == signal.SIGTERM:
        print("edgeslim: terminated; finished stages are kept and a rerun resumes from there", file=sys.stderr)
        return 143
    print("edgeslim: interrupted; finished stages are kept and a rerun resumes from there", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TORCHDYNAMO_VERBOSE", "0")
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    if threading.current_thread() is threading.main_thread():
        _signals.clear()
        signal.signal(signal.SIGTERM, _on_signal)
        # a shell starts background jobs with SIGINT ignored, and Python keeps that: an explicit
        # interrupt (kill -INT) must still stop a run cleanly
        signal.signal(signal.SIGINT, _on_signal)
    try:
        if args.command == "run":
            return _cmd_run(args, console)
        if args.command == "compare":
            return _cmd_compare(args, console)
        if args.command == "search":
            return _cmd_search(args, console)
        return _cmd_report(args, console)
    except (UserError, StageFailed) as exc:
        if _signals:
            return _stopped(_signals[0])
        message = " ".join(str(exc).split())  # always one line
        print(f"edgeslim: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return _stopped(signal.SIGINT)
    except Terminated:
        return _stopped(signal.SIGTERM)
    except OSError as exc:
        if _signals:
            return _stopped(_signals[0])
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"edgeslim: error: {exc.strerror or exc}{where}; the unfinished stage was discarded, finished "
            "stages are kept and a rerun resumes from there",
            file=sys.stderr,
        )
        return 2
    except MemoryError:
        print("edgeslim: error: out of memory (check the model's and data's sizes, or batch_size)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
