"""Transformer exports: optimum-onnx's exporter for Hugging Face models and ONNX Runtime's transformer
optimizer, on a tiny real BERT folder and the real Rotten Tomatoes reviews (32 tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import edgeslim
from edgeslim.engine.store import ONNX_INT8, TORCH_QAT
from edgeslim.errors import StageFailed, UserError
from edgeslim.export.onnx_io import onnx_logits
from edgeslim.export.transformer import Fusion, export_optimum, hf_model
from edgeslim.models import hf
from edgeslim.models.loader import SelectOutput
from tests.conftest import plan_for, small_config

# What ONNX Runtime 1.32's BERT optimizer fuses in the tiny 2-layer BERT as optimum exports it
# (TorchScript graph): the embeddings, both attention blocks, both FFN GELUs, and the residual layer norms.
OPTIMUM_FUSIONS = {"EmbedLayerNormalization": 1, "Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4}


def _run(folder: Path, out: Path, stages: list[Any]) -> edgeslim.RunResult:
    cfg = {
        "name": "bert",
        "seed": 0,
        "model": {"hf": str(folder)},
        "data": {"name": "rotten_tomatoes", "max_length": 32, "max_samples": 300},
        "measure": {"warmup": 2, "runs": 10, "max_seconds": 1.0},
        "stages": stages,
    }
    return edgeslim.run(cfg, out=out)


def _io(graph: onnx.GraphProto) -> tuple[list, list]:
    def dims(v: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return [(i.name, dims(i)) for i in graph.input], [(o.name, dims(o)) for o in graph.output]


def _tokens(batch: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 2000, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # one shorter sequence: the mask must reach the attention
    return {"input_ids": ids, "attention_mask": mask}


def test_optimum_exports_exactly_the_data_inputs_with_named_axes(tiny_bert: Path, tmp_path: Path) -> None:
    """The wrapped classifier (SelectOutput around the token classifier) exports its transformers model:
    input_ids + attention_mask (no token_type_ids), batch/sequence axes, one logits output, PyTorch's values."""
    model = hf.load(tiny_bert, "sequence-classification", 2).eval()
    wrapped = SelectOutput(model, 0)
    assert hf_model(wrapped) is model.hf
    example = _tokens(2, 8)
    path = export_optimum(wrapped, example, tmp_path / "model.onnx", 20, "stages[0].export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # optimum's folder cleaned up
    graph = onnx.load(str(path)).graph
    assert _io(graph) == (
        [("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "sequence"])],
        [("logits", ["batch", 2])],
    )
    x = _tokens()  # other batch and sequence sizes than the export's
    with torch.no_grad():
        reference = model(**x).numpy()
    np.testing.assert_allclose(onnx_logits(path, x), reference, atol=1e-5)


def test_optimum_mistakes_are_one_line(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = hf.load(tiny_bert, "sequence-classification", 2)
    with pytest.raises(UserError, match=r"^stages\[0\]\.export: exporter: optimum exports Hugging Face models"):
        export_optimum(torch.nn.Linear(2, 2), _tokens(), tmp_path / "m.onnx", 20, "stages[0].export")
    ids_only = {"input_ids": _tokens()["input_ids"]}
    with pytest.raises(UserError, match=r"needs an attention_mask input in the data"):
        export_optimum(model, ids_only, tmp_path / "m.onnx", 20, "stages[0].export")

    import optimum.exporters.onnx as optimum_onnx

    def fails(*args: object, **kwargs: object) -> None:
        raise ValueError("Trying to export a custom architecture\nsee the docs at length")

    monkeypatch.setattr(optimum_onnx, "onnx_export_from_model", fails)
    with pytest.raises(StageFailed) as failed:
        export_optimum(model, _tokens(), tmp_path / "m.onnx", 20, "stages[0].export")
    assert str(failed.value) == (
        "stages[0].export: optimum could not export the model: ValueError: Trying to export a custom architecture"
    )


def test_exporter_optimum_on_a_model_that_is_not_hugging_face_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(UserError) as refused:
        edgeslim.run(small_config(["baseline", {"export": {"exporter": "optimum"}}]), out=tmp_path)
    message = str(refused.value)
    assert message.startswith("stages[1].export: exporter: optimum exports Hugging Face models (model: {hf: folder})")
    assert "\n" not in message
    assert not list(tmp_path.iterdir())  # refused at plan time: nothing written


def test_optimum_and_fusion_need_a_float_pytorch_input() -> None:
    fuse = [{"export": {"target": "mobile", "fuse": "transformer"}}]
    with pytest.raises(
        UserError, match=r"^stages\[0\]\.export: fuse: transformer is for the export of a PyTorch model"
    ):
        plan_for(fuse, ONNX_INT8)
    with pytest.raises(UserError, match=r"fuse: transformer is for float models; a QAT model exports with exporter"):
        plan_for(fuse, TORCH_QAT)


def test_the_optimum_export_is_fused_and_passes_parity(tiny_bert: Path, tmp_path: Path) -> None:
    result = _run(tiny_bert, tmp_path, [{"export": {"exporter": "optimum"}}])
    (export,) = result.stages
    assert export.status == "ran"
    graph = onnx.load(str(result.model_file("export"))).graph
    assert _io(graph)[0] == [("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "sequence"])]
    assert export.details["exporter"] == "optimum"
    assert export.details["fusions"] == OPTIMUM_FUSIONS
    assert export.details["fused"] is True
    ops = {n.op_type for n in graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"} <= ops  # what ships
    assert export.details["parity"]["top1_agreement"] == 1.0  # the fused graph against PyTorch
    assert export.details["parity"]["max_abs_diff"] < 1e-5
    hops = [(h["hop"], h["passed"]) for h in export.details["parity_ledger"]]
    assert hops == [("PyTorch -> ONNX FP32", True), ("ONNX FP32 -> fused (ORT transformer optimizer)", True)]
    assert any(n.startswith("fused by ONNX Runtime's transformer optimizer (bert): ") for n in export.notes)
    # the fused attention honours the mask: padding a batch changes nothing
    x = _tokens()
    padded = {k: torch.cat([v, torch.zeros(4, 6, dtype=torch.int64)], dim=1) for k, v in x.items()}
    path = result.model_file("export")
    np.testing.assert_allclose(onnx_logits(path, padded), onnx_logits(path, x), atol=1e-6)


def test_a_pruned_bert_is_fused_with_the_head_count_read_from_the_graph(tiny_bert: Path, tmp_path: Path) -> None:
    """Half the heads removed (4 -> 2 in the graph, 4 in config.json): optimum exports the pruned modules
    and ONNX Runtime's optimizer detects 2 heads, so its Attention ops compute what PyTorch does."""
    stages = [{"prune": {"pruning_ratio": 0.25, "head_pruning_ratio": 0.5}}, {"export": {"exporter": "optimum"}}]
    result = _run(tiny_bert, tmp_path, stages)
    assert [s.status for s in result.stages] == ["ran", "ran"]
    assert any("4 -> 2 heads" in n for n in result.stage("prune").notes)
    export = result.stage("export")
    assert export.details["fused"] is True
    assert export.details["fusions"]["Attention"] == 2
    graph = onnx.load(str(result.model_file("export"))).graph
    attention = [n for n in graph.node if n.op_type == "Attention"]
    assert [onnx.helper.get_attribute_value(a) for n in attention for a in n.attribute if a.name == "num_heads"] == [
        2,
        2,
    ]
    assert export.details["parity"]["top1_agreement"] == 1.0
    assert export.details["parity"]["max_abs_diff"] < 1e-5


def test_fuse_transformer_after_the_torch_exporter(tiny_bert: Path, tmp_path: Path) -> None:
    """The dynamo exporter writes attention as decomposed SDPA, which ONNX Runtime's BERT optimizer does
    not match: layer norms and GELUs fuse, attention does not (why exporter: optimum exists)."""
    result = _run(tiny_bert, tmp_path, [{"export": {"fuse": "transformer"}}])
    export = result.stage("export")
    assert export.details["exporter"] == "torch"
    assert export.details["fused"] is True
    assert export.details["fusions"]["SkipLayerNormalization"] == 4
    assert "Attention" not in export.details["fusions"]
    assert export.details["parity"]["top1_agreement"] == 1.0


@pytest.mark.parametrize("broken", ["parity", "failure"])
def test_a_fusion_that_breaks_parity_or_fails_ships_the_unfused_graph(
    broken: str, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeslim.stages.export as export_stage

    def fuse(source: Path, out: Path, model_type: str = "bert") -> Fusion:
        if broken == "failure":
            raise RuntimeError("pattern mismatch\nat node 12")
        proto = onnx.load(str(source))  # the same graph with its logits negated: every top-1 flips
        for node in proto.graph.node:
            node.output[:] = ["raw_logits" if o == "logits" else o for o in node.output]
        proto.graph.node.append(onnx.helper.make_node("Neg", ["raw_logits"], ["logits"]))
        onnx.save(proto, str(out))
        return Fusion({"Attention": 2}, model_type, typed=True)

    monkeypatch.setattr(export_stage, "fuse_transformer", fuse)
    result = _run(tiny_bert, tmp_path, [{"export": {"exporter": "optimum"}}])
    export = result.stage("export")
    assert export.status == "ran"
    assert export.details["fused"] is False
    graph_ops = {n.op_type for n in onnx.load(str(result.model_file("export"))).graph.node}
    assert "Neg" not in graph_ops and "Attention" not in graph_ops  # the unfused export ships
    assert not list(result.stage_dir("export").glob(".fused*"))
    note = next(n for n in export.notes if n.startswith("kept the unfused graph"))
    if broken == "failure":
        assert note == (
            "kept the unfused graph: ONNX Runtime's transformer optimizer failed (RuntimeError: pattern mismatch)"
        )
    else:
        assert "agrees with PyTorch on top-1 for only 0.00% (min_top1_agreement: 0.99)" in note
        assert export.details["parity_ledger"][-1]["passed"] is False


def test_the_cache_key_follows_optimum_and_transformers_versions(tiny_bert: Path) -> None:
    """optimum's exporter decides the exported graph and transformers computes a Hugging Face model's
    outputs: their versions join the keys of the stages they affect, and only of those."""
    from edgeslim.api import parse_config
    from edgeslim.engine import keys
    from edgeslim.engine.stage import PlanRequest
    from edgeslim.engine.store import TORCH

    cfg = {"name": "b", "model": {"hf": str(tiny_bert)}, "data": {"name": "rotten_tomatoes", "max_length": 32}}
    config = parse_config({**cfg, "stages": ["baseline", {"export": {"exporter": "optimum"}}, "export"]})
    parts = [
        config.stages[i].stage_class(config.stages[i].settings).plan(PlanRequest(TORCH, config, i)).key_parts
        for i in (1, 2)
    ]
    assert set(parts[0]["optimum"]) == {"optimum", "optimum-onnx"} and "optimum" not in parts[1]
    assert keys.package_versions(hugging_face=True)["transformers"] == keys.versions_of("transformers")["transformers"]
    assert "transformers" not in keys.package_versions()


def test_int4_weight_only_quantizes_a_fused_bert_s_linear_layers_to_matmulnbits(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """After optimum's export and fusion, every remaining linear layer (attention output, both FFN
    layers, pooler, classifier) becomes a 4-bit MatMulNBits; the fused Attention keeps its float QKV."""
    # never_slower and the accuracy guard off: this untrained 2-layer BERT is too small for 4-bit kernels
    # to pay and guesses near chance, so either would ship the float model instead (as it should)
    quantize = {"method": "int4", "block_size": 16, "never_slower": False, "guard": None}
    result = _run(tiny_bert, tmp_path, [{"export": {"exporter": "optimum"}}, {"quantize": quantize}])
    assert [s.status for s in result.stages] == ["ran", "ran"]
    graph = onnx.load(str(result.model_file("quantize"))).graph
    ops = [n.op_type for n in graph.node]
    float_matmuls = ops.count("MatMul") + ops.count("Gemm")
    nbits = ops.count("MatMulNBits")
    assert nbits >= 2 * 3 and float_matmuls == 0  # 2 layers x (attention output, FFN in, FFN out), + heads
    assert ops.count("Attention") == 2
    note = next(n for n in result.stage("quantize").notes if "MatMul weights quantized to MatMulNBits" in n)
    assert f"{nbits} of {nbits} MatMul weights" in note
    x = _tokens()
    logits = onnx_logits(result.model_file("quantize"), x)
    assert logits.shape == (4, 2) and np.isfinite(logits).all()
