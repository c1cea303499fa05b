from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.artifacts import ONNX_INT8
from pipeline.onnx_io import onnx_logits
from tests.conftest import make_context, stage_for


def test_static_int8_quantization(tmp_path, data, loader, trained):
    exported = stage_for(["export"]).run(make_context(tmp_path / "e", data, loader, trained, ["export"])).artifact
    stages = [{"quantize": {"calibration_samples": 64}}]
    result = stage_for(stages).run(make_context(tmp_path, data, loader, exported, stages))
    assert result.artifact.kind == ONNX_INT8
    path = result.artifact.file("model")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.int8]
    assert any(t.dims and t.dims[0] == 32 for t in int8_weights)  # the second conv's weights are int8
    # Per-channel: one scale per output channel for conv weights.
    scales = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")]
    assert any(s.shape == (32,) for s in scales)
    x = data.test.tensors[0]
    q = onnx_logits(path, x).argmax(1)
    f = onnx_logits(exported.file("model"), x).argmax(1)
    assert (q == f).mean() > 0.9
    assert not (result.artifact.directory / "preprocessed.onnx").exists()
