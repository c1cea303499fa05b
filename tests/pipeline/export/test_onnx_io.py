"""ONNX files are opened through one function that contains external data to the model's folder."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeslim.errors import UserError
from edgeslim.export.onnx_io import check_onnx_file, open_session


def _model_with_external_weight(folder, location: str):
    """A one-node MatMul whose weight is stored as external data at ``location``."""
    weight = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), name="w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weight],
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.ones((4, 2), dtype=np.float32).tobytes())
    path = _model_with_external_weight(tmp_path, "weights.bin")
    session = open_session(path)
    out = session.run(None, {"x": np.ones((1, 4), dtype=np.float32)})[0]
    assert out.tolist() == [[4.0, 4.0]]


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin"])
def test_parent_traversal_is_refused(tmp_path, location):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 32)
    path = _model_with_external_weight(model_dir, location)
    with pytest.raises(UserError, match=r"tensor 'w' in model\.onnx points to external data outside"):
        open_session(path)


def test_absolute_path_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 32)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = _model_with_external_weight(model_dir, str(tmp_path / "secret.bin"))
    with pytest.raises(UserError, match="outside the model's folder"):
        check_onnx_file(path)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 32)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    os.symlink(tmp_path / "secret.bin", model_dir / "weights.bin")
    path = _model_with_external_weight(model_dir, "weights.bin")
    with pytest.raises(UserError, match="outside the model's folder"):
        check_onnx_file(path)


def test_truncated_onnx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07\x12\x05hello-this-is-not-onnx")
    with pytest.raises(UserError, match=r"broken\.onnx is not a readable ONNX model"):
        check_onnx_file(path)


def _qdq_conv(tmp_path, weight: np.ndarray, activation_zero_point: np.ndarray):
    """input -> Q -> DQ -> Conv(DQ(int8 weight)) -> output: the QDQ form ONNX Runtime fuses."""
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(activation_zero_point, "zp"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.full(weight.shape[0], 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(weight.shape[0], np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0], 4, 4])],
        initializer=inits,
    )
    path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_only_8_bit_weights_or_int8_activations_need_the_exact_int8_mode(tmp_path, monkeypatch):
    """Two u8 x s8 products fit int16 while |w| <= 64: 7-bit weights are exact on the default kernels,
    so the slower exact mode is asked only where a weight or an int8 activation can saturate, and only
    on CPUs whose default kernels saturate (x86 without VNNI): on VNNI or ARM CPUs they are exact."""
    from edgeslim.devices import edgeslim_bench
    from edgeslim.export.onnx_io import int8_can_saturate, needs_exact_int8

    u8 = np.array(128, np.uint8)
    seven_bit = np.array([-64, 64, 3, -5] * 9, np.int8).reshape(2, 2, 3, 3)
    eight_bit = seven_bit.copy()
    eight_bit[0, 0, 0, 0] = -127
    models = {
        "7-bit": _qdq_conv(tmp_path, seven_bit, u8),
        "8-bit": _qdq_conv(tmp_path, eight_bit, u8),
        "s8s8": _qdq_conv(tmp_path, seven_bit, np.array(0, np.int8)),
    }
    assert {k: int8_can_saturate(m) for k, m in models.items()} == {"7-bit": False, "8-bit": True, "s8s8": True}
    monkeypatch.setattr(edgeslim_bench, "u8s8_saturates", lambda: True)  # x86 without VNNI
    assert {k: needs_exact_int8(m) for k, m in models.items()} == {"7-bit": False, "8-bit": True, "s8s8": True}
    monkeypatch.setattr(edgeslim_bench, "u8s8_saturates", lambda: False)  # VNNI or ARM: never
    assert not any(needs_exact_int8(m) for m in models.values())
    with pytest.raises(RuntimeError):  # the option is not set at all
        edgeslim_bench.session_options(exact_int8=True).get_session_config_entry(edgeslim_bench.EXACT_INT8_OPTION)
    monkeypatch.setattr(edgeslim_bench, "u8s8_saturates", lambda: True)
    assert edgeslim_bench.session_options(exact_int8=True).get_session_config_entry(edgeslim_bench.EXACT_INT8_OPTION)
    float_model = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[numpy_helper.from_array(np.ones((4, 2), np.float32), "w")],
    )
    onnx.save(helper.make_model(float_model), str(tmp_path / "float.onnx"))
    assert not int8_can_saturate(tmp_path / "float.onnx")


def test_the_exact_int8_mode_changes_no_answer_where_the_default_kernels_do_not_saturate(tmp_path):
    """Why the mode is asked only where the default kernels saturate: on a CPU that does not saturate
    them (VNNI, ARM), the exact mode gives the same outputs, only from slower kernels. Checked on this
    machine's CPU; on an x86 CPU without VNNI the outputs may differ (that is the point)."""
    import onnxruntime as ort

    from edgeslim.devices import edgeslim_bench

    if edgeslim_bench.u8s8_saturates():
        pytest.skip("x86 without VNNI: the exact mode is meant to change answers here")

    rng = np.random.default_rng(0)
    path = _qdq_conv(tmp_path, rng.integers(-127, 128, (2, 2, 3, 3)).astype(np.int8), np.array(128, np.uint8))
    x = {"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)}
    outputs = []
    for exact in (False, True):
        options = ort.SessionOptions()
        if exact:
            options.add_session_config_entry(edgeslim_bench.EXACT_INT8_OPTION, "1")
        outputs.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, x)[0])
    assert np.array_equal(*outputs)


def test_a_model_the_exact_int8_mode_cannot_load_runs_on_the_default_kernels(tmp_path, monkeypatch):
    """ONNX Runtime's exact INT8 mode fails on an 8-bit weight shared by two MatMuls ("Attempt to
    replace the existing tensor", as with its own static PTQ of a ViT): such a model must still open,
    with the default kernels, and be flagged so reports can say so."""
    from edgeslim.devices import edgeslim_bench
    from edgeslim.export.onnx_io import exact_int8_unavailable, needs_exact_int8, onnx_logits

    monkeypatch.setattr(edgeslim_bench, "u8s8_saturates", lambda: True)  # the mode is asked on such CPUs only
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
        numpy_helper.from_array(np.array([-100, 64, 3, -5] * 4, np.int8).reshape(4, 4), "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"]),
        helper.make_node("MatMul", ["xd", "w"], ["h"]),
        helper.make_node("QuantizeLinear", ["h", "s", "zp"], ["hq"]),
        helper.make_node("DequantizeLinear", ["hq", "s", "zp"], ["hd"]),
        helper.make_node("MatMul", ["hd", "w"], ["y"]),  # the same weight again
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        initializer=inits,
    )
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert exact_int8_unavailable(path) and not needs_exact_int8(path)
    import torch

    assert onnx_logits(path, torch.ones(3, 4)).shape == (3, 4)
    assert not exact_int8_unavailable(
        _qdq_conv(tmp_path, np.full((2, 2, 3, 3), -127, np.int8), np.array(128, np.uint8))
    )
