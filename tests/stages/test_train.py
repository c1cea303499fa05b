from __future__ import annotations

from edgeslim.engine.store import TORCH, Artifact
from edgeslim.train.loop import evaluate
from tests.conftest import TRAIN, make_context, stage_for


def test_train_learns_from_scratch_and_saves_safetensors(tmp_path, data, loader):
    stages = [{"train": TRAIN}]
    source = Artifact(kind=TORCH, directory=None)
    untrained_acc, _ = evaluate(loader.source_model(), data.test)
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, source, stages))
    assert result.artifact.kind == TORCH
    assert (result.artifact.directory / "model.safetensors").is_file()
    acc, _ = evaluate(loader.load(result.artifact), data.test)
    assert acc == result.details["torch_test_accuracy"]
    assert acc > 0.8 and acc > untrained_acc + 0.5
    assert len(result.details["epochs"]) == result.details["epochs"][-1]["epoch"]
