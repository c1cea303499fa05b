"""ONNX Runtime quantization methods, torchao-style: one config class per method, one handler
registered per config class, and one entry point, ``quantize(bench, config, out)``.

The YAML keeps its flat ``quantize:`` block (``edgeslim.stages.quantize.QuantizeConfig``);
``Recipe.config()`` turns it into the method's own config, a discriminated union on ``method``.
Adding a method is a config class with a ``method`` literal, a handler decorated with
``@register(ThatConfig)``, and the config class added to ``MethodConfig``. A field whose flat YAML key
differs from its name (``OptimumDynamic.preset`` is ``optimum_preset`` in the flat block) gives that
key as its pydantic ``alias``: :func:`recipe_from` reads it and ``settings()`` writes it back.

``optimum`` (:class:`OptimumDynamic`) runs Hugging Face optimum's ``ORTQuantizer`` with one of its
``AutoQuantizationConfig`` CPU presets, dynamic INT8. It drives the same ONNX Runtime IntegerOps
quantizer as ``dynamic`` (``quantize_dynamic``), with optimum's settings: symmetric weights, every op
type ONNX Runtime can quantize dynamically, and also the MatMuls between two activations (attention's
Q·K^T and scores·V: optimum does not pass ``MatMulConstBOnly``), which ``dynamic`` leaves in float;
the preset fixes the weight type (``avx2``: uint8, the others int8) and whether 7-bit weights are
possible (``avx512``/``avx2`` take ``reduce_range``; ``avx512_vnni``/``arm64`` are always 8-bit). It
is not one of ``auto``'s candidates: with its default preset it is ``dynamic`` plus quantized
attention MatMuls, so it would mostly re-measure the same model; set ``method: optimum`` to get it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from edgeslim.data.batches import Inputs, count, feeds, select
from edgeslim.devices import edgeslim_bench
from edgeslim.errors import UserError, first_line
from edgeslim.export.onnx_io import load_onnx
from edgeslim.quant.graph import shield_float_nodes

if TYPE_CHECKING:
    from edgeslim.quant.ort import QuantBench


class _MethodConfig(BaseModel):
    """One concrete way to quantize a model (a "recipe"): what a run records and ``auto`` compares."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)
    method: str

    def settings(self) -> dict[str, Any]:
        """The settings that matter for this method (for reports and fallback configs), by their flat
        YAML keys (a field's alias where it has one)."""
        return self.model_dump(by_alias=True)

    @classmethod
    def flat_reduce_range(cls, value: bool | str, picked: Mapping[str, Any]) -> bool:
        """The flat block's ``reduce_range`` (``auto`` or a bool) for this method, given its other settings."""
        return resolve_reduce_range(value)

    def label(self) -> str:
        """A short human name, e.g. ``static QDQ per-channel u8s8 minmax``."""
        raise NotImplementedError


class StaticInt8(_MethodConfig):
    """INT8 weights and activations; activation ranges calibrated on training samples."""

    method: Literal["static"] = "static"
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.999

    def settings(self) -> dict[str, Any]:
        out = self.model_dump()
        if self.calibration != "percentile":
            out.pop("percentile")
        return out

    def label(self) -> str:
        scheme = f"{self.activation_type[0]}8{self.weight_type[0]}8".replace("i", "s")
        granularity = "per-channel" if self.per_channel else "per-tensor"
        calibration = f"percentile {self.percentile:g}" if self.calibration == "percentile" else self.calibration
        bits = " 7-bit weights" if self.reduce_range else ""
        return f"static {self.format.upper()} {granularity} {scheme}{bits} {calibration}"


class DynamicInt8(_MethodConfig):
    """INT8 weights; activations quantized at run time (for Linear-heavy models)."""

    method: Literal["dynamic"] = "dynamic"
    per_channel: bool = True
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False

    def label(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        bits = " 7-bit weights" if self.reduce_range else ""
        return f"dynamic {granularity} u8{self.weight_type[0].replace('i', 's')}8{bits}"


class Int4Weights(_MethodConfig):
    """Weight-only INT4 of MatMul weights (``MatMulNBits``)."""

    method: Literal["int4"] = "int4"
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 4  # int8 compute: about 3x faster than fp32 compute on x86 with VNNI

    def label(self) -> str:
        sym = "symmetric" if self.symmetric else "asymmetric"
        return f"int4 weight-only block {self.block_size} {sym} accuracy_level {self.accuracy_level}"


OptimumPreset = Literal["avx512_vnni", "avx512", "avx2", "arm64"]
OPTIMUM_PRESETS: tuple[str, ...] = ("avx512_vnni", "avx512", "avx2", "arm64")
OPTIMUM_REDUCE_RANGE_PRESETS = ("avx512", "avx2")  # the presets that take reduce_range (the others: 8-bit)
OPTIMUM_UINT8_WEIGHT_PRESETS = ("avx2",)  # u8u8; the others are u8s8


class OptimumDynamic(_MethodConfig):
    """Hugging Face optimum's ``ORTQuantizer``, dynamic INT8 with an ``AutoQuantizationConfig`` preset.

    Per-channel weights by default: per-tensor INT8 hurt a transformer's sentence embeddings (cosine to
    FP32 0.965 vs 0.993 per-channel, issue 14). ``reduce_range`` (7-bit weights) exists only for the
    ``avx512`` and ``avx2`` presets; ``avx512_vnni`` and ``arm64`` always use 8-bit weights, which
    ONNX Runtime's default U8S8 kernels saturate on x86 CPUs without VNNI (exact only in its slower
    exact INT8 mode there)."""

    method: Literal["optimum"] = "optimum"
    preset: OptimumPreset = Field("avx512_vnni", alias="optimum_preset")
    per_channel: bool = True
    reduce_range: bool = False

    @model_validator(mode="after")
    def _preset_takes_reduce_range(self) -> OptimumDynamic:
        if self.reduce_range and self.preset not in OPTIMUM_REDUCE_RANGE_PRESETS:
            raise ValueError(
                f"reduce_range: optimum's {self.preset} preset always uses 8-bit weights; 7-bit weights "
                f"(reduce_range: true) need optimum_preset: {' or '.join(OPTIMUM_REDUCE_RANGE_PRESETS)}"
            )
        return self

    @classmethod
    def flat_reduce_range(cls, value: bool | str, picked: Mapping[str, Any]) -> bool:
        """``auto`` applies to the presets that take ``reduce_range``; the others are 8-bit (False)."""
        preset = picked.get("preset", cls.model_fields["preset"].default)
        if value == "auto" and preset not in OPTIMUM_REDUCE_RANGE_PRESETS:
            return False
        return resolve_reduce_range(value)

    @property
    def weight_type(self) -> Literal["int8", "uint8"]:
        return "uint8" if self.preset in OPTIMUM_UINT8_WEIGHT_PRESETS else "int8"

    def label(self) -> str:
        granularity = "per-channel" if self.per_channel else "per-tensor"
        bits = "7-bit weights" if self.reduce_range else "8-bit weights"
        scheme = f"u8{self.weight_type[0].replace('i', 's')}8"
        return f"optimum ORTQuantizer {self.preset} dynamic {granularity} {scheme} {bits}"


Recipe = StaticInt8 | DynamicInt8 | Int4Weights | OptimumDynamic
MethodConfig = Annotated[Recipe, Field(discriminator="method")]
METHOD_CONFIG = TypeAdapter(MethodConfig)
CONFIG_TYPES: dict[str, type[_MethodConfig]] = {
    c.model_fields["method"].default: c for c in (StaticInt8, DynamicInt8, Int4Weights, OptimumDynamic)
}


def resolve_reduce_range(value: bool | str) -> bool:
    """``auto``: 7-bit weights where the default U8S8 kernels saturate (x86 without VNNI). There the
    fast default kernels are exact with 7-bit weights, while 8-bit weights need ONNX Runtime's exact
    INT8 mode, whose kernels are slower (ResNet-18 here: 0.57 vs 0.69-1.0 ms, same accuracy)."""
    return edgeslim_bench.u8s8_saturates() if value == "auto" else bool(value)


def recipe_from(settings: Mapping[str, Any], method: str | None = None) -> Recipe:
    """The recipe of ``method`` (default: ``settings["method"]``) from a flat mapping of settings, such
    as the YAML's ``quantize:`` block: each method takes its own keys and ignores the others."""
    config_type = CONFIG_TYPES[method or settings["method"]]
    picked = {
        name: settings[key]
        for name, field in config_type.model_fields.items()
        if (key := field.alias or name) in settings and name != "method"
    }
    if "reduce_range" in picked:
        picked["reduce_range"] = config_type.flat_reduce_range(picked["reduce_range"], picked)
    return config_type(**picked)  # type: ignore[return-value]


Handler = Callable[["QuantBench", Any, Path, Sequence[str], Sequence[str] | None], None]
HANDLERS: dict[type[_MethodConfig], Handler] = {}


def register(config_type: type[_MethodConfig]) -> Callable[[Handler], Handler]:
    """Decorator: ``handler(bench, config, out, exclude, only)`` quantizes for ``config_type``."""

    def add(handler: Handler) -> Handler:
        HANDLERS[config_type] = handler
        return handler

    return add


def quantize(
    bench: QuantBench, config: _MethodConfig, out: Path, exclude: Sequence[str] = (), only: Sequence[str] | None = None
) -> Path:
    """Quantize ``bench``'s model with ``config``; ``exclude`` stays FP32; ``only`` (if given) is all that is."""
    HANDLERS[type(config)](bench, config, out, exclude, only)
    return out


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


class _Reader:
    """Feeds calibration batches to ONNX Runtime's calibrator, every input by name.

    Every batch has the same size: the histogram calibrators (entropy, percentile) stack all
    batches' activations into one array, which fails on a shorter last batch. The last batch
    is topped up with the first samples instead."""

    def __init__(self, names: list[str], samples: Inputs, batch_size: int = 32):
        n = count(samples)
        size = min(batch_size, n)
        batches = []
        for i in range(0, n, size):
            index = np.arange(i, i + size) % n
            batches.append(feeds(select(samples, index), names))
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@register(StaticInt8)
def _static(
    bench: QuantBench, config: StaticInt8, out: Path, exclude: Sequence[str], only: Sequence[str] | None
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[config.calibration]
    cache_tag = config.calibration + (f"-{config.percentile:g}" if config.calibration == "percentile" else "")
    extra = {"CalibPercentile": config.percentile} if config.calibration == "percentile" else None
    quantize_static(
        str(bench.prepared),
        str(out),
        _Reader(bench.input_names, bench.calibration),
        quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
        per_channel=config.per_channel and bench.per_channel_allowed,
        reduce_range=config.reduce_range,
        activation_type=_quant_type(config.activation_type),
        weight_type=_quant_type(config.weight_type),
        nodes_to_quantize=list(only) if only else None,
        nodes_to_exclude=list(exclude),
        calibrate_method=method,
        extra_options=extra,
        calibration_cache_path=bench.work_dir / f"calibration-{cache_tag}.json",
    )
    if exclude or only:  # some weighted nodes stay FP32: make sure ONNX Runtime leaves them so
        model = load_onnx(out)
        if shield_float_nodes(model):
            onnx.save(model, str(out))


@register(DynamicInt8)
def _dynamic(
    bench: QuantBench, config: DynamicInt8, out: Path, exclude: Sequence[str], only: Sequence[str] | None
) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(
        str(bench.matmul_model),
        str(out),
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=_quant_type(config.weight_type),
        nodes_to_quantize=list(only) if only else None,
        nodes_to_exclude=list(exclude),
    )


@register(Int4Weights)
def _int4(
    bench: QuantBench, config: Int4Weights, out: Path, exclude: Sequence[str], only: Sequence[str] | None
) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    skip = set(exclude)
    if only:  # nodes_to_include does not restrict in 1.32: exclude everything else instead
        skip |= {n.name for n in bench.nodes("int4")} - set(only)
    quantizer = MatMulNBitsQuantizer(
        load_onnx(bench.matmul_model),
        bits=4,
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level or None,
        nodes_to_exclude=sorted(skip),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out))


def optimum_installed() -> bool:
    """Whether optimum's ONNX Runtime package is installed, without importing it (for planning)."""
    import importlib.util

    try:
        return importlib.util.find_spec("optimum.onnxruntime") is not None
    except (ImportError, ValueError):  # no ``optimum`` package at all, or a broken one
        return False


def optimum_versions() -> dict[str, str]:
    """The installed versions of optimum and optimum-onnx (their presets decide the quantized model)."""
    from edgeslim.engine.keys import versions_of

    return versions_of("optimum", "optimum-onnx")


def optimum_missing() -> str | None:
    """None if optimum's ONNX Runtime quantizer imports here, else why not (one line). Imported only
    when asked (a few seconds: it pulls in transformers), so ``import edgeslim`` stays fast."""
    try:
        from optimum.onnxruntime import ORTQuantizer  # noqa: F401
    except ImportError as exc:
        return f"optimum's ORTQuantizer is not importable ({first_line(exc)}); install optimum-onnx"
    return None


@register(OptimumDynamic)
def _optimum(
    bench: QuantBench, config: OptimumDynamic, out: Path, exclude: Sequence[str], only: Sequence[str] | None
) -> None:
    """``ORTQuantizer.from_pretrained(folder, file_name=...).quantize(save_dir=..., quantization_config=...)`` on
    the same graph ``dynamic`` quantizes (Gemm as MatMul, so ``exclude``/``only`` name the same nodes). optimum
    writes ``<stem>_quantized.onnx`` and its ``ort_config.json`` into a fresh folder; the model is moved to ``out``."""
    missing = optimum_missing()
    if missing is not None:
        raise UserError(f"quantize.method: optimum: {missing}")
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    options: dict[str, Any] = {
        "is_static": False,
        "per_channel": config.per_channel,
        "nodes_to_quantize": list(only) if only else None,
        "nodes_to_exclude": list(exclude),
    }
    if config.preset in OPTIMUM_REDUCE_RANGE_PRESETS:
        options["reduce_range"] = config.reduce_range
    qconfig = getattr(AutoQuantizationConfig, config.preset)(**options)
    with tempfile.TemporaryDirectory(prefix="optimum-", dir=bench.work_dir) as tmp:
        source = Path(tmp) / "model.onnx"  # its own folder: optimum looks beside the model for a config/tokenizer
        try:
            os.link(bench.matmul_model, source)
        except OSError:  # a file system without hard links
            shutil.copyfile(bench.matmul_model, source)
        quantizer = ORTQuantizer.from_pretrained(Path(tmp), file_name=source.name)
        saved = quantizer.quantize(save_dir=Path(tmp) / "quantized", quantization_config=qconfig)
        os.replace(saved / f"{source.stem}_quantized.onnx", out)
