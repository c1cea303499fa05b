"""The parity ledger: where a quantized model's outputs part from the float model's, hop by hop.

A QAT or PTQ model can disagree with its source in three places: the export (PyTorch -> ONNX),
the quantization itself (float -> INT8 arithmetic, judged with ONNX Runtime's graph optimization
*disabled*, so Q/DQ are computed exactly as written), and ONNX Runtime's fusion of the Q/DQ graph
into integer kernels (the same file at the device profile's optimization level: requantization
rounds differently). Each hop gets top-1 agreement and max abs diff; when the fusion hop breaks
its gate, :func:`first_divergent_node` names the first node whose output parts, so the user knows
whether export, quantization or ONNX Runtime's fusion is at fault.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeslim.data.batches import Inputs, Split, first
from edgeslim.engine.evaluate import output_parity
from edgeslim.export.onnx_io import load_onnx, onnx_logits


@dataclass
class Hop:
    """One step between two versions of the model, compared on the same inputs."""

    name: str  # e.g. "ONNX INT8 (optimization disabled) -> ONNX INT8 (all)"
    parity: dict[str, Any]  # top1_agreement, max_abs_diff, mean_abs_diff, samples
    gate: float | None = None  # minimum top-1 agreement, when this hop is gated
    first_divergent_node: str | None = None

    @property
    def passed(self) -> bool:
        return self.gate is None or self.parity["top1_agreement"] >= self.gate

    def row(self) -> dict[str, Any]:
        return {
            "hop": self.name,
            **self.parity,
            "gate": self.gate,
            "passed": self.passed,
            "first_divergent_node": self.first_divergent_node,
        }

    def line(self) -> str:
        p = self.parity
        text = f"{self.name}: top-1 agreement {p['top1_agreement']:.2%}, max abs diff {p['max_abs_diff']:.3g}"
        if self.first_divergent_node:
            text += f"; first diverging node: {self.first_divergent_node}"
        return text


def logits_at(path: Path, x: Inputs | Split, level: str, exact_int8: bool, batch_size: int = 256) -> np.ndarray:
    """Outputs of ``path`` on ``x`` at ONNX Runtime optimization ``level``."""
    return onnx_logits(path, x, batch_size, graph_optimization=level, exact_int8=exact_int8)


def quantized_hops(
    float_model: Path | None,
    int8_model: Path,
    x: Inputs | Split,
    level: str,
    exact_int8: bool,
    gate: float,
    reference: np.ndarray | None = None,
    reference_name: str = "ONNX FP32",
) -> list[Hop]:
    """Float -> INT8 as written (optimization disabled) -> INT8 as ONNX Runtime runs it at ``level``.

    ``reference`` (outputs of the source, e.g. PyTorch) replaces ``float_model`` as the first
    reference. The fusion hop is gated; when it fails, the first diverging node is located.
    """
    written = logits_at(int8_model, x, "disable", exact_int8)
    hops = []
    if reference is None and float_model is not None:
        reference = onnx_logits(float_model, x, exact_int8=exact_int8)
    if reference is not None:
        hops.append(Hop(f"{reference_name} -> ONNX INT8 (optimization disabled)", output_parity(reference, written)))
    fused = logits_at(int8_model, x, level, exact_int8)
    fusion = Hop(f"ONNX INT8 (optimization disabled) -> ONNX INT8 ({level})", output_parity(written, fused), gate)
    if not fusion.passed:
        fusion.first_divergent_node = first_divergent_node(int8_model, first(x, 64), level, exact_int8)
    hops.append(fusion)
    return hops


def first_divergent_node(model_path: Path, x: Inputs, level: str, exact_int8: bool, tol: float = 0.05) -> str:
    """The first node (in graph order) whose dequantized output differs between optimization
    ``disable`` and ``level`` by more than ``tol`` of its range.

    Each activation's DequantizeLinear output is made the graph's output in turn (a DQ output as a
    graph output leaves the producer's Conv -> Q fusion intact), and the truncated model run both
    ways. Returns ``"none found"`` when every checked tensor agrees (the divergence is then in the
    final float ops).
    """
    model = load_onnx(model_path)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    candidates = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] not in inits]
    with tempfile.TemporaryDirectory() as tmp:
        for dq in candidates:
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            del probe.graph.output[:]
            probe.graph.output.append(onnx.ValueInfoProto(name=dq.output[0]))
            path = Path(tmp) / "probe.onnx"
            onnx.save(probe, str(path))
            a = logits_at(path, x, "disable", exact_int8)
            b = logits_at(path, x, level, exact_int8)
            scale = float(np.abs(a).max()) or 1.0
            if float(np.abs(a - b).max()) > tol * scale:
                q = producers.get(dq.input[0])
                source = producers.get(q.input[0]) if q is not None and q.input else None
                node = source or q or dq
                return f"{node.name} ({node.op_type})"
    return "none found"
