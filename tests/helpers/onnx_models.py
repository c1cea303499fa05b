"""Small real ONNX models built with ``onnx.helper``: dynamic image sizes, token ids, softmax heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by every ONNX Runtime the runner supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def dynamic_image_model(path: Path, *, softmax: bool = False, classes: int = 4) -> Path:
    """Conv -> global pool -> linear on ``x`` [batch, 3, height, width] (cost grows with H and W)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((8, classes)).astype(np.float32), "fc"),
    ]
    head = "logits_raw" if softmax else "logits"
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], [head]),
    ]
    out = "probs" if softmax else "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", [head], [out], axis=-1))
    graph = helper.make_graph(
        nodes,
        "dynamic_image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", classes])],
        initializer=weights,
    )
    return _save(graph, path)


def token_model(path: Path, *, vocab: int = 100, seq: int | str = 16) -> Path:
    """Embedding lookup (Gather on int64 ``ids``) masked by int64 ``attention_mask``, mean-pooled."""
    emb = numpy_helper.from_array(np.random.default_rng(1).standard_normal((vocab, 8)).astype(np.float32), "emb")
    axes = numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes"], ["mu"]),
        helper.make_node("Mul", ["e", "mu"], ["em"]),
        helper.make_node("ReduceMean", ["em"], ["logits"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", seq]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", seq]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        initializer=[emb, axes],
    )
    return _save(graph, path)
