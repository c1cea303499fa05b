"""Data-parallel runs under ``torchrun``: one process per rank, PyTorch's own process group.

``edgeslim run CONFIG --nproc N`` (or the user's ``torchrun … -m edgeslim run CONFIG``) starts N
copies of the run. Rank 0 is the run as usual: it alone plans, writes artifacts, manifests and
reports, and runs the stages that do not train. When it runs a stage that trains (``Stage.distributed``:
``train``, ``finetune`` with distillation and QAT), it first sends every other rank an :class:`Order`
carrying the stage, its input model and the earlier models it may read (their files, so other
machines need no shared folder); all ranks then run the stage together — the training loop wraps the
model in ``DistributedDataParallel`` and reads its shard of the data — and the other ranks throw
their copy away. The other ranks only ever wait for orders, so they write nothing.

Backends: gloo on CPU, NCCL when the process has a GPU. A rank that dies closes its sockets; the
collectives of the others fail at once, and every rank ends with one line (see :func:`peer_stopped`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from edgeslim.engine.store import Artifact

# how long a rank waits for the others (rank 0 may export and quantize for a long time while the
# others wait for their next order); a rank that dies is noticed at once, not after this
WAIT_S = float(os.environ.get("EDGESLIM_DIST_TIMEOUT_S", 7 * 24 * 3600))


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` (1 outside torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def writer(self) -> bool:
        return self.rank == 0


def launched() -> World:
    """What torchrun told this process (``RANK``, ``WORLD_SIZE``); one process when not under torchrun."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def current() -> World:
    """The process group this process has joined (one process when none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def join() -> World:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); a no-op for one process."""
    world = launched()
    if world.size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=WAIT_S))
    return current()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def data_parallel(model: nn.Module) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` (in a process group), else ``model`` itself.

    Built per epoch: the set of trainable parameters may change between epochs (gradual
    unfreezing), and DDP fixes it at construction. ``static_graph``: a model may have parameters
    its forward never uses (an unused head, a skipped branch), which plain DDP would wait for
    forever; a static graph learns which in the first step, where ``find_unused_parameters`` would
    walk the autograd graph on every step.
    """
    world = current()
    if world.size == 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    device = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device, static_graph=True)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of parameters outside the DDP-wrapped model (distillation adapters)."""
    world = current()
    if world.size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world.size


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks (the training loss: every rank sees the same number)."""
    world = current()
    if world.size == 1:
        return value
    total = value.detach().clone().float()
    dist.all_reduce(total)
    return total / world.size


def sums(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (counts and loss sums of an evaluation shard)."""
    if current().size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def weighted_mean(scores: dict[str, float], weight: float) -> dict[str, float]:
    """Per-name mean of scores computed on each rank's shard, weighted by the shard's size."""
    if current().size == 1:
        return scores
    names = sorted(scores)
    t = torch.tensor([scores[n] * weight for n in names] + [weight], dtype=torch.float64)
    dist.all_reduce(t)
    return {n: float(t[i] / t[-1]) for i, n in enumerate(names)}


def peer_stopped(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank stopped (its sockets closed)."""
    if isinstance(exc, getattr(dist, "DistBackendError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "[gloo")
    )


# ---- orders from rank 0 ------------------------------------------------------------------------


@dataclass
class PackedArtifact:
    """An artifact with its files' bytes, so a rank on another machine can rebuild it."""

    kind: str
    meta: dict[str, Any]
    files: dict[str, bytes] | None  # relative path -> bytes; None for the run's source model

    @classmethod
    def pack(cls, artifact: Artifact) -> PackedArtifact:
        if artifact.directory is None:
            return cls(artifact.kind, artifact.meta, None)
        root = artifact.directory
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return cls(artifact.kind, artifact.meta, files)

    def unpack(self, folder: Path) -> Artifact:
        if self.files is None:
            return Artifact(self.kind, None, self.meta)
        for name, data in self.files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return Artifact(self.kind, folder, self.meta)


@dataclass
class Order:
    """What rank 0 tells the other ranks: run ``stage`` (index ``index``) with these inputs, or end."""

    kind: str  # "stage" or "end"
    index: int = -1
    stage: Any = None  # the Stage instance (its settings may be a guard's safer fallback)
    input: PackedArtifact | None = None
    earlier: dict[int, PackedArtifact] = field(default_factory=dict)
    report: Any = None  # with "end": the run's report
