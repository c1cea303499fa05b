"""``edgeslim run CONFIG --nproc N``: the run under torchrun's launcher on this machine.

PyTorch's elastic launcher (what ``torchrun --standalone --nproc-per-node N`` uses) starts N copies
of ``python -m edgeslim run CONFIG``, each with its ``RANK``/``WORLD_SIZE``, and stops them all when
one fails. Every rank prints its own one-line error; this process adds one line naming the first
rank that failed and exits with its code (2 for bad input, as a one-process run would).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid

from rich.console import Console

from edgeslim.errors import StageFailed, UserError


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``edgeslim run`` arguments every rank gets (all of this run's, less ``--nproc``)."""
    argv = ["run", str(args.config), "--out", str(args.out)]
    if args.force:
        argv.append("--force")
    if args.from_stage is not None:
        argv += ["--from", str(args.from_stage)]
    return argv


def threads_per_rank(nproc: int) -> int:
    """Intra-op threads for each rank: the machine's cores shared out (N ranks of all-cores each
    would oversubscribe the CPU and run slower than one process). ``OMP_NUM_THREADS`` wins."""
    return max(1, (os.cpu_count() or 1) // nproc)


def launch(args: argparse.Namespace, console: Console) -> int:
    """Run ``args`` (an ``edgeslim run`` command line) in ``args.nproc`` processes; returns the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from edgeslim import api

    api.load_config(args.config)  # a config error is one line from here rather than one from every rank
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we say what failed, once
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(args.nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=args.nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port (torchrun --standalone)
        max_restarts=0,  # a failed rank ends the run; a rerun resumes from the last finished stage
        monitor_interval=0.2,
    )
    console.print(f"[dim]{args.nproc} processes (torchrun; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})[/dim]")
    try:
        elastic_launch(config, sys.executable)("-m", "edgeslim", *worker_argv(args))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        error = UserError if code == 2 else StageFailed
        raise error(
            f"run --nproc {args.nproc}: rank {rank} {how}; every rank was stopped, finished stages are kept and a "
            "rerun (with any --nproc) resumes from there"
        ) from None
    except SignalException as exc:  # the launcher stopped every rank; each said where it stopped
        interrupted = exc.sigval == signal.SIGINT
        print(
            f"edgeslim: {'interrupted' if interrupted else 'terminated'}; finished stages are kept and a rerun "
            "resumes from there",
            file=sys.stderr,
        )
        return 130 if interrupted else 143
    return 0
