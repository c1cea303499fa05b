"""Quantization methods: one config class per method, one registered handler per config class."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeslim.errors import UserError
from edgeslim.quant import methods


def test_each_method_has_its_own_config_and_a_handler():
    assert set(methods.CONFIG_TYPES) == {"static", "dynamic", "int4", "optimum"}
    for name, config_type in methods.CONFIG_TYPES.items():
        assert config_type in methods.HANDLERS
        config = methods.recipe_from({"method": name})
        assert type(config) is config_type and config.method == name


def test_the_union_is_discriminated_on_method_and_refuses_other_methods_keys():
    config = methods.METHOD_CONFIG.validate_python({"method": "int4", "block_size": 64})
    assert isinstance(config, methods.Int4Weights) and config.block_size == 64
    with pytest.raises(ValidationError, match="block_size"):
        methods.METHOD_CONFIG.validate_python({"method": "static", "block_size": 64})


def test_a_flat_settings_block_gives_each_method_its_own_keys():
    flat = {"method": "int4", "block_size": 64, "calibration": "entropy", "per_channel": False}
    assert methods.recipe_from(flat) == methods.Int4Weights(block_size=64)
    assert methods.recipe_from(flat, "static") == methods.StaticInt8(calibration="entropy", per_channel=False)


def test_recipe_settings_are_the_methods_fields():
    assert methods.DynamicInt8().settings() == {
        "method": "dynamic",
        "per_channel": True,
        "weight_type": "int8",
        "reduce_range": False,
    }
    assert "percentile" not in methods.StaticInt8().settings()  # only with calibration: percentile
    assert methods.StaticInt8(calibration="percentile").settings()["percentile"] == 99.999
    assert methods.StaticInt8().label() == "static QDQ per-channel u8s8 minmax"


def test_quantize_dispatches_on_the_config_type(tmp_path: Path):
    class Toy(methods.StaticInt8):
        """A registered method is found by its config's type, like torchao's quantize_."""

    seen = []

    @methods.register(Toy)
    def toy(bench, config, out, exclude, only):
        seen.append((bench, config, exclude, only))
        out.write_text("quantized")

    try:
        out = methods.quantize("bench", Toy(), tmp_path / "m.onnx", exclude=["conv1"])
    finally:
        del methods.HANDLERS[Toy]
    assert out.read_text() == "quantized"
    assert seen == [("bench", Toy(), ["conv1"], None)]


# ---------------------------------------------------------------- optimum


def test_optimum_reads_its_preset_from_the_flat_key_and_writes_it_back():
    recipe = methods.recipe_from({"method": "optimum", "optimum_preset": "avx2", "per_channel": False})
    assert isinstance(recipe, methods.OptimumDynamic) and recipe.preset == "avx2" and not recipe.per_channel
    assert recipe.settings() == {
        "method": "optimum",
        "optimum_preset": "avx2",
        "per_channel": False,
        "reduce_range": False,
    }
    assert methods.METHOD_CONFIG.validate_python(recipe.settings()) == recipe  # the flat keys round-trip
    assert recipe.label() == "optimum ORTQuantizer avx2 dynamic per-tensor u8u8 8-bit weights"
    assert methods.OptimumDynamic().label() == "optimum ORTQuantizer avx512_vnni dynamic per-channel u8s8 8-bit weights"


def test_optimum_7_bit_weights_only_with_the_presets_that_take_them(monkeypatch):
    monkeypatch.setattr(methods.edgeslim_bench, "u8s8_saturates", lambda: True)  # x86 without VNNI
    auto = {"method": "optimum", "reduce_range": "auto"}
    assert methods.recipe_from(auto).reduce_range is False  # avx512_vnni: always 8-bit
    assert methods.recipe_from({**auto, "optimum_preset": "arm64"}).reduce_range is False
    assert methods.recipe_from({**auto, "optimum_preset": "avx512"}).reduce_range is True
    assert "7-bit weights" in methods.recipe_from({**auto, "optimum_preset": "avx2"}).label()
    with pytest.raises(ValidationError, match=r"reduce_range: optimum's avx512_vnni preset always uses 8-bit"):
        methods.OptimumDynamic(reduce_range=True)
    with pytest.raises(ValidationError, match=r"optimum_preset"):
        methods.METHOD_CONFIG.validate_python({"method": "optimum", "optimum_preset": "avx9"})


def test_optimum_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", None)  # what an uninstalled package raises
    reason = methods.optimum_missing()
    assert reason is not None and "install optimum-onnx" in reason and "\n" not in reason
    with pytest.raises(UserError, match=r"^quantize\.method: optimum: optimum's ORTQuantizer is not importable"):
        methods.quantize(None, methods.OptimumDynamic(), Path("unused.onnx"))  # type: ignore[arg-type]
