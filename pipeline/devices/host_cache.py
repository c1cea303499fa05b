"""Measurements of this host kept across runs and search trials (``$EDGESLIM_HOST_CACHE``, else
``$EDGESLIM_CACHE/host``, else ``~/.cache/edgeslim/host``).

Some tables cost minutes to time and depend only on a model's *structure*, the settings that shape
the timed variants, the host profile, the ``measure:`` budget, this CPU and the versions of the code
and runtime that time it, never on the weights: the per-layer latency table of latency-driven
pruning is one. A search runs the prune stage once per trial, with a different target each time, on
the same baseline; without this cache every trial would time the same variants again. Each entry
stores its full key beside the value, so a hash collision or a hand-edited file is measured anew
rather than trusted. The cache is best effort: an unwritable folder only means measuring every time.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from edgeslim.config.schema import canonical_hash
from edgeslim.data.batches import Inputs
from edgeslim.devices import cache_home
from edgeslim.devices.edgeslim_bench import device_facts
from edgeslim.engine.store import read_json, write_json

FORMAT = 1  # bump when an entry's layout changes: older entries are then never read


def cache_root() -> Path:
    explicit = os.environ.get("EDGESLIM_HOST_CACHE")
    if explicit:
        return Path(explicit)
    return cache_home() / "host"


def structure_fingerprint(model: nn.Module, example: Inputs) -> str:
    """The model's modules (names, types, settings) and tensor shapes and the example's shapes: what
    an ONNX Runtime timing depends on; weights' values are left out."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}|{type(module).__qualname__}|{module.extra_repr()}\n".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
    for tensor in example.values() if isinstance(example, dict) else [example]:
        h.update(f"input|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
    return h.hexdigest()


def cached(kind: str, key: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """``measure()``'s result for ``key`` on this host, from the cache when an entry matches.

    Returns the value and, when it came from the cache, when it was measured (else None). This CPU,
    its ISA flags and the runtime's versions join the key."""
    full_key = {"format": FORMAT, "kind": kind, "device": device_facts(), **key}
    path = cache_root() / kind / f"{canonical_hash(full_key)}.json"
    try:
        entry = read_json(path)
        if entry.get("key") == _plain(full_key):
            return entry["value"], entry.get("measured_at", "?")
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # absent, unreadable or not an entry: measure
    value = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": full_key, "value": value, "measured_at": _now()})
    except OSError:
        pass  # best effort (read-only home, full disk): the value is still used
    return value, None


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so stored and fresh keys compare."""
    import json

    return json.loads(json.dumps(obj, default=str))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
