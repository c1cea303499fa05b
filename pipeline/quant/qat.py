"""PT2E quantization-aware training helpers (torchao), shared by the stages that need them.

Flow: ``torch.export`` -> ``prepare_qat_pt2e`` (fake-quant graph) -> train -> ``convert_pt2e``
-> ONNX. ONNX Runtime fuses the converted QDQ graph into real INT8 kernels, because the quantizer
places Q/DQ where its QDQ transformers look for them (:func:`onnxruntime_quantizer`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import nn

from edgeslim.data.batches import Inputs, concat, count


def _torchao() -> ModuleType:
    """Import torchao's PT2E pieces quietly (it logs about optional CUDA kernels on import)."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization.pt2e as pt2e
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


def onnxruntime_quantizer(weight_bits: int = 8) -> Any:
    """A PT2E quantizer whose Q/DQ placement is what ONNX Runtime fuses into integer kernels.

    ONNX Runtime's QDQ transformers fuse ``DQ -> Conv/Gemm/MatMul -> Q``, binary ``Add``/``Mul``
    with both inputs and the output quantized, ``Relu -> Q`` (the Relu folded into the Q), pooling
    and ``Concat``. The X86 Inductor quantizer targets Inductor instead (a conv, the residual add
    and the ReLU annotated as one unit, no Q between conv and add), and ONNX Runtime left those
    convs in float, dequantizing their weights at every run (8 of 20 convs of a ResNet-18).
    The XNNPACK-style annotations (conv[+bn][+relu], linear, add[+relu], mul, cat, pooling: each
    quantized at its inputs and output) are the ORT pattern; its default int8 activations are not
    (x86 ORT fuses them only where it can convert the pair to uint8, which failed around shared
    tensors), so activations are uint8 0-255 and weights symmetric per-channel int8 (-127..127):
    ORT's U8S8 format. Measured on a residual + depthwise + SE block: 8/8 convs and the head in
    integer kernels, against 6/8 and 0/1 with the X86 Inductor quantizer.

    ``weight_bits=7``: weights in -64..64, where those U8S8 kernels are exact on x86 CPUs without
    VNNI (8-bit weights need ONNX Runtime's slower exact INT8 mode there).

    The XNNPACK quantizer ships in torchao's ``testing`` package (torchao 0.18 is pinned).
    """
    import dataclasses

    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits: 7 or 8 (got {weight_bits})")
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    activations = dataclasses.replace(config.input_activation, dtype=torch.uint8, quant_min=0, quant_max=255)
    weight_limit = 2 ** (weight_bits - 1) - 1 if weight_bits == 8 else 64
    weights = dataclasses.replace(config.weight, quant_min=-weight_limit, quant_max=weight_limit)
    config = dataclasses.replace(config, input_activation=activations, output_activation=activations, weight=weights)
    return XNNPACKQuantizer().set_global(config)


def prepare_qat(model: nn.Module, example: Inputs, weight_bits: int = 8) -> torch.fx.GraphModule:
    """Insert fake quantization where ONNX Runtime will run integer kernels (:func:`onnxruntime_quantizer`)."""
    pt2e = _torchao()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    if count(example) < 2:
        example = concat([example, example])
    batch = torch.export.Dim("batch")
    if isinstance(example, dict):  # named inputs: keyword arguments, each with the same batch axis
        args, kwargs, shapes = (), example, {k: {0: batch} for k in example}
    else:
        args, kwargs, shapes = (example,), None, ({0: batch},)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=shapes)
        prepared = prepare_qat_pt2e(program.module(), onnxruntime_quantizer(weight_bits))
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
