"""ONNX export, safe loading and ONNX Runtime inference helpers.

Every ONNX file the pipeline opens goes through :func:`load_onnx` (a ``ModelProto``) or
:func:`open_session` (an ONNX Runtime session); both first run :func:`check_onnx_file`, which
refuses external-data references that leave the model's folder (``../``, absolute paths,
symlinks) and tensors that declare more data than the files hold. ``tests/test_security.py``
checks that no other code calls ``onnx.load`` or opens sessions directly.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edgeslim.data.batches import (
    SINGLE_INPUT,
    Inputs,
    Split,
    concat,
    count,
    dynamic_axes,
    feeds,
    names,
    select,
)
from edgeslim.errors import UserError

GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


def _quiet_exporter() -> contextlib.ExitStack:
    """Silence torch.onnx's progress prints and warnings about optional packages."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return stack


def export_onnx(model: torch.nn.Module, example: Inputs, path: Path, opset: int = 20) -> Path:
    """Export with the dynamo exporter and weights inside the file. Named inputs stay separate ONNX
    inputs; the batch axis is dynamic, and so is a token input's sequence axis where the model
    allows it (:func:`edgeslim.data.batches.dynamic_axes`). ONNX axis names follow the input spec."""
    if count(example) < 2:  # a batch of 1 would be specialised away by torch.export
        example = concat([example, example])
    batch = torch.export.Dim("batch", min=1, max=65536)
    axes = dynamic_axes(example)
    shapes = {
        name: {i: batch if axis == "batch" else torch.export.Dim.AUTO for i, axis in spec.items()}
        for name, spec in axes.items()
    }
    args, kwargs = ((), example) if isinstance(example, dict) else ((example,), None)
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            args,
            kwargs=kwargs,
            dynamic_shapes=shapes if isinstance(example, dict) else (shapes[SINGLE_INPUT],),
            input_names=names(example),
            output_names=["logits"],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None
    tmp = path.with_name(f".{path.name}.tmp")
    with _quiet_exporter():
        program.save(str(tmp), external_data=False)
    proto = load_onnx(tmp, "exported model")
    renamed = name_dynamic_axes(proto, axes)
    if any(n.op_type == "DequantizeLinear" for n in proto.graph.node):  # a quantized (QAT) graph
        from edgeslim.quant.graph import mean_to_global_pool

        unshare_quantization_params(proto)
        mean_to_global_pool(proto)  # spatial means -> GlobalAveragePool: an integer kernel in ORT
        renamed = True
    if renamed:
        onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def name_dynamic_axes(proto: onnx.ModelProto, axes: dict[str, dict[int, str]]) -> bool:
    """Give the graph inputs' dynamic axes the input spec's names (``batch``, ``sequence``) where the
    exporter named them after its symbols (``s0``); renames the same symbol in the outputs too."""
    rename: dict[str, str] = {}
    for value in proto.graph.input:
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            wanted = axes.get(value.name, {}).get(i)
            if wanted and dim.dim_param and dim.dim_param != wanted:
                rename[dim.dim_param] = wanted
    if not rename:
        return False
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    return True


def unshare_quantization_params(model: onnx.ModelProto) -> int:
    """Give each DequantizeLinear its own integer initializers (zero points, weights).

    The dynamo exporter stores equal constants once, so two per-channel weight quantizers with
    the same channel count share one zero-point tensor. ONNX Runtime's exact-INT8 mode for x86
    CPUs without VNNI (``session.x64quantprecision``) rewrites each conv's int8 weight parameters
    to uint8 and fails on a shared one ("Attempt to replace the existing tensor"). Values and
    outputs are unchanged; float models have no DequantizeLinear and are left byte-identical.
    Returns the number of initializers copied.
    """
    integer = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    inits = {i.name: i for i in model.graph.initializer if i.data_type in integer}
    seen: set[str] = set()
    copied = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                twin = onnx.TensorProto()
                twin.CopyFrom(inits[name])
                twin.name = f"{name}__{node.name}"
                model.graph.initializer.append(twin)
                node.input[k] = twin.name
                copied += 1
            seen.add(name)
    return copied


def load_onnx(path: Path, what: str = "model", *, external_data: bool = True):
    """The one way the pipeline reads an ONNX file: checked by :func:`check_onnx_file` first.

    ``external_data=False`` returns the graph without reading external tensor files (cheap, for
    reading names and shapes).
    """
    from onnx.external_data_helper import load_external_data_for_model

    proto = check_onnx_file(path, what)  # parsed once, without external data
    if external_data:
        load_external_data_for_model(proto, str(path.parent))
    return proto


def check_onnx_file(path: Path, what: str = "model"):
    """Refuse unreadable models, external data outside the model's own folder, and tensors
    that declare more bytes than the file stores (a crafted header must not drive allocation).

    Returns the checked ``ModelProto`` (external tensors not yet read)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    if not path.is_file():
        raise UserError(f"{what}: ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"{what}: {path.name} is not a readable ONNX model ({type(exc).__name__})") from None
    root = path.parent.resolve()
    for tensor in _all_tensors(proto):
        if not uses_external_data(tensor):
            _check_declared_size(tensor, path, what)
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = path.parent / location
        if os.path.isabs(location) or not target.resolve().is_relative_to(root) or target.is_symlink():
            raise UserError(
                f"{what}: tensor '{tensor.name}' in {path.name} points to external data outside the "
                f"model's folder ({location!r}); refused"
            )
        if not target.is_file():
            raise UserError(
                f"{what}: tensor '{tensor.name}' in {path.name}: external data file {location!r} is missing"
            )
        available = target.stat().st_size - int(entries.get("offset", 0) or 0)
        _check_declared_size(tensor, path, what, stored=min(available, int(entries.get("length", available) or 0)))
    return proto


def _check_declared_size(tensor, path: Path, what: str, stored: int | None = None) -> None:
    """A tensor's shape must fit the data actually stored for it (bytes of raw or external
    data, or values in a typed field); ``stored`` is the external data's byte count."""
    import onnx

    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return
    elements = 1
    for dim in tensor.dims:
        if dim < 0:
            raise UserError(f"{what}: tensor '{tensor.name}' in {path.name} has a negative dimension {dim}; refused")
        elements *= dim
    if elements == 0:
        return
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
    if bits is None:
        bits = 8 * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    needed = (elements * bits + 7) // 8
    if stored is None and not tensor.HasField("raw_data"):
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
        values = len(getattr(tensor, field))
        if values >= elements:
            return
        stored = values * bits // 8
    elif stored is None:
        stored = len(tensor.raw_data)
    if needed > stored:
        raise UserError(
            f"{what}: tensor '{tensor.name}' in {path.name} declares shape {list(tensor.dims)} "
            f"({_human_bytes(needed)}) but only {_human_bytes(stored)} are stored; refused"
        )


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1024 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _all_tensors(proto: object):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(proto)


# Two u8 x s8 products summed in int16 (what U8S8 kernels do on x86 without VNNI) stay exact
# while |weight| <= 64: 2 * 255 * 64 = 32640 <= 32767. ONNX Runtime's reduce_range gives such weights.
SATURATION_FREE_WEIGHT = 64
# the weight input of each integer op (QDQ weights enter through DequantizeLinear's input 0)
_WEIGHT_INPUT = {
    "DequantizeLinear": 0,
    "QLinearConv": 3,
    "QLinearMatMul": 3,
    "QGemm": 3,
    "ConvInteger": 1,
    "MatMulInteger": 1,
    "DynamicQuantizeMatMul": 1,
    "MatMulIntegerToFloat": 1,
}


@functools.lru_cache(maxsize=256)
def _can_saturate(path: str, _mtime_ns: int, _size: int) -> bool:
    model = load_onnx(Path(path), external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        zero_point = inits.get(node.input[2]) if node.op_type == "QuantizeLinear" and len(node.input) > 2 else None
        if zero_point is not None and zero_point.data_type == onnx.TensorProto.INT8:  # int8 activations: S8S8
            return True
        k = _WEIGHT_INPUT.get(node.op_type)
        if k is None or len(node.input) <= k or node.input[k] not in inits:
            continue
        weight = inits[node.input[k]]
        if weight.data_type != onnx.TensorProto.INT8:
            continue
        if weight.data_location == onnx.TensorProto.EXTERNAL:
            return True  # not read here: assume the worst
        if np.abs(numpy_helper.to_array(weight).astype(np.int16)).max(initial=0) > SATURATION_FREE_WEIGHT:
            return True
    return False


@functools.lru_cache(maxsize=256)
def _exact_int8_loads(path: str, _mtime_ns: int, _size: int) -> bool:
    import onnxruntime as ort

    from edgeslim.devices.edgeslim_bench import session_options

    model = Path(path)
    check_onnx_file(model)
    options = session_options(1, "all", exact_int8=True)
    options.log_severity_level = 4  # the failure is the answer here, not an error for the terminal
    try:
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception:  # any load failure means the same: the mode is unusable here
        return False
    return True


def int8_can_saturate(path: Path) -> bool:
    """Whether ``path`` has int8 weights beyond 7 bits (or int8 activations): where ONNX Runtime's default
    U8S8 kernels saturate (x86 CPUs without VNNI), such a model answers differently than in exact
    arithmetic. A float model, or one quantized with 7-bit weights (``reduce_range``), does not.
    ORT-format files cannot be read here: True."""
    if path.suffix == ".ort":
        return True
    stat = path.stat()
    return _can_saturate(str(path), stat.st_mtime_ns, stat.st_size)


def _exact_mode_matters(path: Path) -> bool:
    """This CPU's default U8S8 kernels saturate (x86 without VNNI) and ``path`` can saturate them."""
    from edgeslim.devices import edgeslim_bench

    return edgeslim_bench.u8s8_saturates() and int8_can_saturate(path)


def needs_exact_int8(path: Path) -> bool:
    """Whether ``path`` needs ONNX Runtime's exact INT8 mode on this machine: the CPU's default U8S8
    kernels saturate (x86 without VNNI) and the model can saturate them (:func:`int8_can_saturate`).

    Elsewhere the default kernels are exact and faster than the exact mode (on VNNI CPUs too): measuring
    there in exact mode would understate the speed its users get. A model the exact mode cannot load
    (see :func:`exact_int8_unavailable`) is run as ORT runs it by default: False."""
    if not _exact_mode_matters(path):
        return False
    if path.suffix == ".ort":
        return True
    stat = path.stat()
    return _exact_int8_loads(str(path), stat.st_mtime_ns, stat.st_size)


def exact_int8_unavailable(path: Path) -> bool:
    """True for a model that needs the exact INT8 mode on this machine but that ONNX Runtime fails to
    load in it.

    Seen with ONNX Runtime's own static PTQ of a ViT (8-bit weights): the mode's weight conversion
    stops with "Attempt to replace the existing tensor". Such a model is evaluated and timed with
    the default kernels, whose int16 sums can saturate: its accuracy is what its users would get,
    and the report says so."""
    if path.suffix == ".ort" or not _exact_mode_matters(path):
        return False
    stat = path.stat()
    return not _exact_int8_loads(str(path), stat.st_mtime_ns, stat.st_size)


def open_session(path: Path, threads: int = 1, graph_optimization: str = "all", exact_int8: bool = True):
    """An ONNX Runtime CPU session, opened only after the file passed :func:`check_onnx_file`.

    ``exact_int8``: see ``edgeslim_bench.EXACT_INT8_OPTION``; asked only where the model needs it
    (:func:`needs_exact_int8`). An ORT-format file (``.ort``, Fixed style) keeps the kernels chosen
    when it was converted, so the option cannot act on it."""
    from edgeslim.devices.edgeslim_bench import create_session

    if path.suffix != ".ort":  # ORT-format files are flatbuffers without external data
        check_onnx_file(path)
    exact_int8 = exact_int8 and needs_exact_int8(path)
    return create_session(str(path), threads, graph_optimization, exact_int8=exact_int8)


def onnx_logits(
    path: Path,
    inputs: Inputs | Split,
    batch_size: int = 256,
    threads: int = 1,
    exact_int8: bool = True,
    graph_optimization: str = "all",
) -> np.ndarray:
    """Run a model over a batch of inputs or a whole split, ``batch_size`` samples at a time;
    returns the stacked first outputs. Named inputs are fed by name."""
    session = open_session(path, threads=threads, graph_optimization=graph_optimization, exact_int8=exact_int8)
    input_names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Split):
        chunks = (x for x, _ in inputs.batches(batch_size))
    else:
        chunks = (select(inputs, slice(i, i + batch_size)) for i in range(0, count(inputs), batch_size))
    return np.concatenate([session.run(None, feeds(x, input_names))[0] for x in chunks])
