from __future__ import annotations

import torch
from torch import nn

from edgeslim.prune.graph import ForwardFailure, locate_failure


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
