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
