"""The host measurement cache: a matching entry is reused, anything else is measured again, and a
cache that cannot be written never stops a run."""

from __future__ import annotations

import torch
from torch import nn

from edgeslim.devices import host_cache


def _counting(value: dict):
    calls = []

    def measure() -> dict:
        calls.append(1)
        return value

    return measure, calls


def test_an_entry_is_reused_only_for_the_same_key(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_HOST_CACHE", str(tmp_path))
    measure, calls = _counting({"ms": 1.5})
    value, when = host_cache.cached("table", {"model": "a", "ratios": [0.25, 0.5]}, measure)
    assert value == {"ms": 1.5} and when is None and len(calls) == 1
    value, when = host_cache.cached("table", {"model": "a", "ratios": [0.25, 0.5]}, measure)
    assert value == {"ms": 1.5} and when is not None and len(calls) == 1  # from the cache
    host_cache.cached("table", {"model": "a", "ratios": [0.25]}, measure)  # another key: measured
    assert len(calls) == 2
    (entry,) = {p for p in (tmp_path / "table").iterdir() if "0.5" in p.read_text()}
    assert '"device"' in entry.read_text()  # this CPU is part of what the entry was measured for


def test_a_corrupt_or_mismatched_entry_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLIM_HOST_CACHE", str(tmp_path))
    measure, calls = _counting({"ms": 2.0})
    host_cache.cached("table", {"model": "b"}, measure)
    (entry,) = (tmp_path / "table").iterdir()
    entry.write_text("{ not json")
    value, when = host_cache.cached("table", {"model": "b"}, measure)
    assert value == {"ms": 2.0} and when is None and len(calls) == 2
    entry.write_text(entry.read_text().replace('"model": "b"', '"model": "c"'))  # a key that is not ours
    _, when = host_cache.cached("table", {"model": "b"}, measure)
    assert when is None and len(calls) == 3


def test_an_unwritable_cache_only_means_measuring(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("EDGESLIM_HOST_CACHE", str(blocker / "below-a-file"))
    measure, calls = _counting({"ms": 3.0})
    for _ in range(2):
        assert host_cache.cached("table", {"model": "d"}, measure) == ({"ms": 3.0}, None)
    assert len(calls) == 2


def test_the_structure_fingerprint_ignores_weights_but_not_shapes():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    b = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))  # other random weights
    narrower = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1))
    strided = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.zeros(1, 3, 16, 16)
    fp = host_cache.structure_fingerprint
    assert fp(a, x) == fp(b, x)
    assert len({fp(a, x), fp(narrower, x), fp(strided, x), fp(a, torch.zeros(1, 3, 32, 32))}) == 4
