"""The meta_init stage on the digits slice: deterministic, held-out classes kept out, a full report."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from edgeslim.api import parse_config
from edgeslim.errors import UserError
from tests.conftest import make_context, small_config, stage_for

META = {
    "algorithm": "fomaml",
    "ways": 3,
    "shots": 2,
    "query": 3,
    "held_out_classes": [7, 8, 9],
    "iterations": 4,
    "meta_batch": 2,
    "inner_steps": 2,
    "adapt_steps": [1, 3],
    "eval_tasks": 3,
}


def _run(tmp_path, data, loader, trained, settings):
    stages = [{"meta_init": settings}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, trained, stages))
    weights = load_file(str(next(result.artifact.directory.glob("*.safetensors"))))
    return result, weights


@pytest.mark.parametrize("algorithm", ["fomaml", "reptile"])
def test_meta_init_is_deterministic_and_reports(tmp_path, data, loader, trained, algorithm):
    settings = {**META, "algorithm": algorithm}
    first, w1 = _run(tmp_path / "a", data, loader, trained, settings)
    _second, w2 = _run(tmp_path / "b", data, loader, trained, settings)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    before = load_file(str(next(trained.directory.glob("*.safetensors"))))
    assert any(not torch.equal(w1[k], before[k]) for k in w1 if k in before), "meta-training changed nothing"
    d = first.details
    assert d["held_out_classes"] == [7, 8, 9] and not set(d["meta_classes"]) & {7, 8, 9}
    assert len(d["meta_loss"]) == 4 and all(loss > 0 for loss in d["meta_loss"])
    assert set(d["adaptation"]) == {"1", "3"}
    for k in d["adaptation"].values():
        assert 0 <= k["without"] <= 1 and 0 <= k["with"] <= 1
    assert "held-out classes [7, 8, 9]" in first.notes[1]


def test_meta_init_refuses_impossible_episodes(tmp_path, data, loader, trained):
    with pytest.raises(UserError, match="meta_init"):
        _run(tmp_path, data, loader, trained, {**META, "ways": 9})


def test_meta_init_config_validates():
    with pytest.raises(UserError, match=r"stages\[0\]\.meta_init: adapt_steps"):
        parse_config(small_config([{"meta_init": {"adapt_steps": []}}]))
    with pytest.raises(UserError, match="algorithm"):
        parse_config(small_config([{"meta_init": {"algorithm": "maml2"}}]))


def test_meta_init_composes_between_prune_and_finetune(tmp_path):
    """train → prune → meta_init → finetune as one run; the rerun reuses every stage."""
    from edgeslim.api import run
    from tests.conftest import TRAIN

    stages = [
        {"train": {**TRAIN, "epochs": 3}},
        {"prune": {"importance": "l1", "pruning_ratio": 0.5}},
        {"meta_init": {**META, "algorithm": "reptile"}},
        {"finetune": {"epochs": 1, "batch_size": 32}},
    ]
    config = parse_config(small_config(stages))
    first = run(config, tmp_path).report
    assert [s.status for s in first.stages] == ["ran"] * 4
    meta = first.stages[2]
    assert meta.name == "meta_init" and meta.metrics.params == first.stages[1].metrics.params  # same pruned shape
    assert any("held-out classes [7, 8, 9]" in note for note in meta.notes)
    again = run(config, tmp_path).report
    assert [s.status for s in again.stages] == ["cached"] * 4
