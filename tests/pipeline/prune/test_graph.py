from __future__ import annotations

import torch
from torch import nn

from edgeslim.prune.graph import (
    ForwardFailure,
    Unused,
    find_unused,
    graph_arguments,
    locate_failure,
    parameter_conflicts,
    sync_head_dims,
    unwrapped_parameters,
)


class Broken(nn.Module):
    """``block.fc`` expects 8 features but gets 6: the failure is inside ``block.fc``, after ``stem``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 6)
        self.block = nn.Sequential(nn.Linear(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


def test_locate_failure_names_the_innermost_running_module_and_the_last_one_that_finished():
    model = Broken().train()
    failure = locate_failure(model, torch.randn(2, 4))
    assert failure is not None
    assert (failure.module, failure.after) == ("block.0", "stem")
    assert failure.error.startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert failure.describe() == f"{failure.error} (in 'block.0', after 'stem' ran)"
    assert model.training  # the mode is restored, and no hook is left behind
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_locate_failure_is_none_for_a_model_that_runs():
    assert locate_failure(nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4)) is None


def test_a_failure_in_the_models_own_forward_says_so():
    assert ForwardFailure("", "fc", "RuntimeError: bad").describe() == (
        "RuntimeError: bad (in the model's own forward, after 'fc' ran)"
    )


class LayerScaled(nn.Module):
    """A bare ``[1, tokens, width]`` table, a ``[1, C, 1, 1]`` scale, and a scalar gate (no channel axis)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.scale = nn.Parameter(torch.ones(1, 6, 1, 1))
        self.gate = nn.Parameter(torch.ones(1))
        self.table = nn.Parameter(torch.zeros(1, 5, 6))
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (self.conv(x) * self.scale * self.gate).mean((2, 3))
        return self.fc(self.norm(h[:, None, :] + self.table).mean(1))


def test_unwrapped_parameters_are_the_bare_ones_with_their_channel_dim():
    found = unwrapped_parameters(LayerScaled())
    assert {name: dim for name, (_, dim) in found.items()} == {"scale": 1, "table": 2}
    assert graph_arguments(LayerScaled())["unwrapped_parameters"][0][1] == 1


def test_parameter_conflicts_name_the_layers_a_transposed_table_would_break():
    model = LayerScaled()
    assert parameter_conflicts(model, torch.randn(2, 1, 8, 8), [model.fc], (nn.Conv2d, nn.Linear)) == {}
    model.table = nn.Parameter(torch.zeros(1, 6, 5))  # channels along dim 1, torch-pruning would prune dim 2
    model.forward = lambda x: model.fc(model.norm((model.conv(x).mean((2, 3))[:, :, None] + model.table).mean(2)))
    conflicts = parameter_conflicts(model, torch.randn(2, 1, 8, 8), [model.fc], (nn.Conv2d, nn.Linear))
    assert conflicts == {"table": ["conv"]}


def test_sync_head_dims_follows_the_pruned_qkv():
    attn = nn.Module()
    attn.num_heads, attn.head_dim, attn.qkv = 3, 8, nn.Linear(24, 3 * 5 * 3)
    plain = nn.Module()
    plain.num_heads, plain.qkv = 3, nn.Linear(24, 45)  # infers its head size: nothing to update
    model = nn.ModuleDict({"attn": attn, "plain": plain})
    sync_head_dims(model)
    assert attn.head_dim == 5 and not hasattr(plain, "head_dim")


class Pooled(nn.Module):
    """An attention layer (its ``out_proj`` is used through its weight, never called), a frozen layer, a
    spare layer, and a pooler whose output is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 8).requires_grad_(False)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.spare = nn.Linear(8, 8)
        self.pooler = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.frozen(x)[:, None, :]
        h = self.attn(h, h, h)[0][:, 0]
        self.pooler(h)
        return (self.head(h),)


def test_find_unused_separates_spare_layers_from_dead_ones_and_keeps_what_is_used_indirectly():
    model = Pooled()
    unused = find_unused(model, torch.randn(2, 4))
    assert unused == Unused(never_called=["spare"], dead=["pooler.0"])
    assert unused.all == ["spare", "pooler.0"]
    assert not model.frozen.weight.requires_grad  # restored


def test_dead_modules_join_the_traced_outputs_so_their_inputs_shrink_with_their_producer():
    import torch_pruning as tp

    model, example = Pooled(), torch.randn(2, 4)
    kwargs = graph_arguments(model, ["pooler.0"])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, **kwargs)
    assert model.pooler[0] in graph.module2node
    plain = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    assert model.pooler[0] not in plain.module2node and model.spare not in graph.module2node
