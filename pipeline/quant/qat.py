"""PT2E quantization-aware training helpers (torchao), shared by the stages that need them.

Flow: ``torch.export`` -> ``prepare_qat_pt2e`` (fake-quant graph) -> train -> ``convert_pt2e``
-> ONNX. ONNX Runtime fuses the converted QDQ graph into real INT8 kernels.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import nn


def _torchao() -> ModuleType:
    """Import torchao's PT2E pieces quietly (it logs about optional CUDA kernels on import)."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization.pt2e as pt2e
        import torchao.quantization.pt2e.fake_quantize
        import torchao.quantization.pt2e.quantize_pt2e
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    return pt2e


def is_graph_module(model: nn.Module) -> bool:
    return isinstance(model, torch.fx.GraphModule)


def set_mode(model: nn.Module, train: bool) -> None:
    """``model.train(train)`` that also works on exported graph modules (which refuse ``.train()``)."""
    if is_graph_module(model):
        pt2e = _torchao()
        (pt2e.move_exported_model_to_train if train else pt2e.move_exported_model_to_eval)(model)
    else:
        model.train(train)


def prepare_qat(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Insert fake quantization (X86 quantizer: u8 activations, per-channel s8 weights)."""
    pt2e = _torchao()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    if example.shape[0] < 2:
        example = torch.cat([example, example])
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
        prepared = prepare_qat_pt2e(program.module(), quantizer)
    pt2e.move_exported_model_to_train(prepared)
    return prepared


def freeze_observers(model: nn.Module) -> None:
    """Stop updating quantization ranges (evaluation must not move them)."""
    from torchao.quantization.pt2e.fake_quantize import disable_observer

    model.apply(disable_observer)


def freeze_bn_stats(model: nn.Module) -> None:
    """Use running BatchNorm statistics in the QAT graph from now on."""
    pt2e = _torchao()
    # In an exported graph, BatchNorm's train/eval behaviour is switched by the graph
    # rewrite; freezing statistics = evaluating BN in eval mode while training the rest.
    pt2e.move_exported_model_to_eval(model)


def convert(prepared: nn.Module) -> torch.fx.GraphModule:
    """Fake-quant graph -> quantized (QDQ) graph in eval mode."""
    pt2e = _torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    freeze_observers(prepared)
    pt2e.move_exported_model_to_eval(prepared)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_pt2e(prepared)
    pt2e.move_exported_model_to_eval(converted)
    return converted


@contextlib.contextmanager
def observers_paused(model: nn.Module) -> Iterator[None]:
    """Evaluate a QAT model without letting the evaluation data move its quantization ranges."""
    fake_quants = [m for m in model.modules() if hasattr(m, "observer_enabled") and hasattr(m, "fake_quant_enabled")]
    saved = [m.observer_enabled.clone() for m in fake_quants]
    for m in fake_quants:
        m.observer_enabled[0] = 0
    try:
        yield
    finally:
        for m, flag in zip(fake_quants, saved, strict=True):
            m.observer_enabled.copy_(flag)
