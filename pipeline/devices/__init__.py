"""Where models are timed: the host (a worker process per measurement), arm64 under emulation,
remote reports; the standalone on-device runner ``edgeslim_bench`` and its report schema."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """``$EDGESLIM_CACHE``, else ``~/.cache/edgeslim``: what edgeslim keeps outside the repo, shared by
    runs (the arm64 emulation environment, tables measured on this host)."""
    base = os.environ.get("EDGESLIM_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "edgeslim"
