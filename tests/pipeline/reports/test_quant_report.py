"""The quantization sections of report.md and report.html come from the stages' own details: INT8
coverage, the parity ledger from PyTorch to the emulated device, and per-layer SQNR."""

from __future__ import annotations

from pathlib import Path

from edgeslim.engine.records import REPORT_JSON
from edgeslim.engine.store import write_json
from edgeslim.reports import quant_report
from edgeslim.reports.html import write_run_html
from edgeslim.reports.run_report import render_markdown
from tests.pipeline.reports.test_run_report import synthetic_report

HOP = {"top1_agreement": 0.995, "max_abs_diff": 0.031, "mean_abs_diff": 0.002, "samples": 1000, "split": "test"}


def quantized_report():
    report = synthetic_report()
    prune, quantize = report.stages[2], report.stages[3]
    prune.details = {"parity_ledger": [{**HOP, "hop": "PyTorch -> ONNX FP32", "gate": 0.99, "passed": True}]}
    quantize.details = {
        "int8_coverage": {"summary": "INT8 coverage: 20/20 convs, 1/1 linears in integer kernels; 2 Q/DQ node(s)"},
        "parity_ledger": [
            {**HOP, "hop": "ONNX FP32 -> ONNX INT8 (optimization disabled)", "gate": None, "passed": True},
            {
                **HOP,
                "hop": "ONNX INT8 (optimization disabled) -> ONNX INT8 (all)",
                "top1_agreement": 0.95,
                "gate": 0.99,
                "passed": False,
                "first_divergent_node": "/layer2/conv|Conv",
            },
        ],
        "layer_sqnr": [
            {"node": f"conv{i}", "op_type": "Conv", "sqnr_db": 30.0 + i, "sqnr_drop_db": 5.0 - i} for i in range(11)
        ]
        + [{"node": "exact", "op_type": "Conv", "sqnr_db": None, "sqnr_drop_db": None}],  # infinite: stored null
    }
    return report


def test_the_ledger_lists_every_hop_in_run_order_and_names_the_failing_one():
    headers, rows = quant_report.parity_ledger(quantized_report())
    assert headers[:2] == ["stage", "hop"]
    assert [r[1] for r in rows] == [
        "PyTorch -> ONNX FP32",
        "ONNX FP32 -> ONNX INT8 (optimization disabled)",
        "ONNX INT8 (optimization disabled) -> ONNX INT8 (all)",
    ]
    assert rows[0][6] == "99.00% passed" and rows[1][6] == ""
    assert rows[2][4] == "95.00%" and rows[2][6] == "99.00% FAILED" and rows[2][7] == "/layer2/conv|Conv"


def test_markdown_and_html_show_coverage_ledger_and_the_noisiest_layers(tmp_path: Path):
    report = quantized_report()
    md = render_markdown(report)
    for title in ("## INT8 coverage", "## Parity ledger", "## Per-layer quantization noise"):
        assert title in md
    assert "- 03-quantize: INT8 coverage: 20/20 convs" in md
    assert "/layer2/conv\\|Conv" in md  # a pipe inside a cell is escaped
    assert md.count("| 03-quantize | conv") == quant_report.SQNR_ROWS
    write_json(tmp_path / REPORT_JSON, report.to_json())
    page = write_run_html(tmp_path).read_text()
    assert "<h2>Parity ledger</h2>" in page and "99.00% FAILED" in page and "<h2>INT8 coverage</h2>" in page


def test_a_run_without_quantization_has_no_such_sections():
    md = render_markdown(synthetic_report())
    assert "## Parity ledger" not in md and "## INT8 coverage" not in md
