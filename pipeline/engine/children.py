"""Child processes that cannot outlive the run.

A stage that measures latency or converts a model starts helper processes. If the run is killed
(SIGKILL gives it no chance to clean up), such a child must not keep running beside the rerun,
where it would skew the rerun's latency measurements. On Linux every child therefore asks the
kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1
# Resolved once here: between fork and exec the child only makes this one foreign call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def run_child(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` for helper processes: killed with the run if the run dies."""
    return subprocess.run(cmd, preexec_fn=_die_with_parent, **kwargs)
