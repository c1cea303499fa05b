"""Data-parallel training under a real gloo process group (2 CPU processes, as torchrun starts them)."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from edgeslim.config.schema import DataSpec
from edgeslim.data.batches import ShardSplit, TensorSplit
from edgeslim.data.datasets import load_data
from edgeslim.engine import distributed
from edgeslim.engine.store import TORCH, Artifact
from edgeslim.models.zoo import build_model
from edgeslim.train.loop import TrainLoopConfig, evaluate, fit
from tests.conftest import SMALL, TRAIN
from tests.helpers.ranks import run_ranks


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _one_step(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One SGD step of the DDP-wrapped MLP on this rank's batch, plus an adapter outside the model."""
    world = distributed.current()
    model, adapter = _mlp(), nn.Parameter(torch.ones(10))
    net = distributed.data_parallel(model)
    x, y = batches[world.rank]
    loss = nn.functional.cross_entropy(net(x) * adapter, y)
    loss.backward()
    distributed.average_gradients([adapter])
    with torch.no_grad():
        for p in [*model.parameters(), adapter]:
            p -= 0.5 * p.grad
    return {**{k: v.detach().clone() for k, v in model.state_dict().items()}, "adapter": adapter.detach().clone()}


def test_gradients_are_averaged_across_ranks():
    """After one step every rank holds the same parameters, and they are the step a single process
    takes on the two ranks' batches together (mean loss over equal halves = mean of the halves)."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    rank0, rank1 = run_ranks(_one_step, 2, batches)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    together = [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))]
    single = _one_step(together)
    initial = _mlp().state_dict()
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], value, atol=1e-6, rtol=1e-5)
        if name in initial:
            assert not torch.equal(value, initial[name]), f"{name} did not move"


def _train_digits(seed: int) -> dict[str, object]:
    """tiny_cnn trained on the digits slice (conftest's TRAIN settings); test accuracy and a weight digest."""
    data = load_data(_data_config())
    torch.manual_seed(seed)
    model = build_model("tiny_cnn", {}, data.in_channels, data.num_classes)
    result = fit(model, data.train, data.val, TrainLoopConfig(**TRAIN), seed=seed)
    digest = sum(float(p.detach().double().sum()) for p in model.parameters())
    return {
        "test_accuracy": evaluate(model, data.test)[0],
        "digest": digest,
        "epochs": len(result.history),
        "history": result.history,
    }


def _data_config() -> DataSpec:
    return DataSpec(**SMALL)


def test_two_processes_train_as_well_as_one():
    """The 2-process run's test accuracy is within the seed-to-seed noise of 1-process runs.

    Tolerance: 3 standard deviations of three 1-process seeds, and at least 3 points: the global
    batch is the same, but the shard order, the BatchNorm statistics (per-rank halves of a batch)
    and the float sums differ, so it is another draw of the same training, not the same numbers."""
    single = [_train_digits(seed)["test_accuracy"] for seed in (0, 1, 2)]
    rank0, rank1 = run_ranks(_train_digits, 2, 0)
    assert rank0["digest"] == rank1["digest"], "ranks ended with different weights"
    assert rank0["history"] == rank1["history"], "ranks saw different losses or made different decisions"
    tolerance = max(3 * statistics.stdev(single), 0.03)
    mean = statistics.mean(single)
    assert abs(rank0["test_accuracy"] - mean) <= tolerance, (rank0["test_accuracy"], single)
    again, _ = run_ranks(_train_digits, 2, 0)
    assert again["test_accuracy"] == rank0["test_accuracy"], "a given world size must reproduce"


def _importance(criterion: str) -> dict[str, float]:
    from edgeslim.train.importance import parameter_importance

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8, generator=g), torch.randint(0, 10, (12,), generator=g)
    return parameter_importance(_mlp(), criterion, x, y)  # type: ignore[arg-type]


def test_fisher_importance_is_shared_out_and_averaged():
    """Each rank scores half the calibration samples; the weighted mean is the one-process Fisher."""
    rank0, rank1 = run_ranks(_importance, 2, "fisher")
    single = _importance("fisher")
    assert rank0 == rank1
    for name, value in single.items():
        assert rank0[name] == pytest.approx(value, rel=1e-5)


def test_batch_size_must_split_over_the_ranks():
    rank0, rank1 = run_ranks(_odd_batch, 2)
    assert rank0 == rank1
    assert "does not split evenly over 2 processes" in rank0


def _odd_batch() -> str:
    from edgeslim.errors import UserError

    data = load_data(_data_config())
    model = build_model("tiny_cnn", {}, data.in_channels, data.num_classes)
    try:
        fit(model, data.train, data.val, TrainLoopConfig(epochs=1, batch_size=33), where="stages[0].train")
    except UserError as exc:
        return str(exc)
    return "no error"


def test_packed_artifact_round_trips(tmp_path):
    src = tmp_path / "a"
    (src / "sub").mkdir(parents=True)
    (src / "weights.safetensors").write_bytes(b"\x00\x01")
    (src / "sub" / "x.json").write_text("{}")
    packed = distributed.PackedArtifact.pack(Artifact(TORCH, src, {"params": 3}))
    back = packed.unpack(tmp_path / "b")
    assert back.meta == {"params": 3} and back.kind == TORCH
    assert (tmp_path / "b" / "weights.safetensors").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b" / "sub" / "x.json").read_text() == "{}"
    assert distributed.PackedArtifact.pack(Artifact(TORCH, None, {})).unpack(tmp_path / "c").directory is None


def test_one_process_is_left_alone():
    model = _mlp()
    assert distributed.current() == distributed.World(0, 1)
    assert distributed.data_parallel(model) is model
    assert distributed.sums([1.0, 2.0]) == [1.0, 2.0]


def test_shard_split_deals_like_distributed_sampler():
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    split = TensorSplit(x, y)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [ShardSplit(split, r, 3) for r in range(3)]
    seen = [torch.cat([b[1] for b in s.batches(2, order)]) for s in shards]
    assert [len(s) for s in seen] == [4, 4, 4]  # padded to 12: every rank runs the same steps
    assert {s.steps(2) for s in shards} == {2}
    assert set(torch.cat(seen).tolist()) == set(range(10))
    sampler = torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=False)
    assert seen[1].tolist() == order[list(sampler)].tolist()
    unpadded = [torch.cat([b[1] for b in ShardSplit(split, r, 3, pad=False).batches(4)]) for r in range(3)]
    assert sorted(torch.cat(unpadded).tolist()) == list(range(10))


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(10):
            yield torch.tensor([float(i)]), i


def test_shard_split_deals_stream_batches_in_rounds():
    """A stream read in its own order: every world-th batch; padded, only whole rounds (equal steps)."""
    from edgeslim.data.batches import StreamSplit

    split = StreamSplit(_Stream(), torch.arange(10))
    dealt = [[b[1].tolist() for b in ShardSplit(split, r, 2).batches(3)] for r in range(2)]
    assert dealt == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]  # batches 0..3 dealt in 2 rounds
    assert [ShardSplit(split, r, 2).steps(3) for r in range(2)] == [2, 2]
    three = [[b[1].tolist() for b in ShardSplit(split, r, 3).batches(3)] for r in range(3)]
    assert three == [[[0, 1, 2]], [[3, 4, 5]], [[6, 7, 8]]]  # the 4th batch would leave ranks 1-2 idle
    assert [b[1].tolist() for b in ShardSplit(split, 0, 3, pad=False).batches(3)] == [[0, 1, 2], [9]]
