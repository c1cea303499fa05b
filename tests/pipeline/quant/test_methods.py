"""Quantization methods: one config class per method, one registered handler per config class."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeslim.quant import methods
from edgeslim.quant.ort import Recipe


def test_each_method_has_its_own_config_and_a_handler():
    assert set(methods.CONFIG_TYPES) == {"static", "dynamic", "int4"}
    for name, config_type in methods.CONFIG_TYPES.items():
        assert config_type in methods.HANDLERS
        config = Recipe(method=name).config()
        assert type(config) is config_type and config.method == name


def test_the_union_is_discriminated_on_method_and_refuses_other_methods_keys():
    config = methods.METHOD_CONFIG.validate_python({"method": "int4", "block_size": 64})
    assert isinstance(config, methods.Int4Weights) and config.block_size == 64
    with pytest.raises(ValidationError, match="block_size"):
        methods.METHOD_CONFIG.validate_python({"method": "static", "block_size": 64})


def test_recipe_settings_are_the_methods_fields():
    assert Recipe(method="dynamic").settings() == {
        "method": "dynamic",
        "per_channel": True,
        "weight_type": "int8",
        "reduce_range": False,
    }
    assert "percentile" not in Recipe().settings()  # only with calibration: percentile
    assert Recipe(calibration="percentile").settings()["percentile"] == 99.999


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
