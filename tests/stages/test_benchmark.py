from __future__ import annotations

import json

from edgeslim.devices.latency_report import validate_report
from tests.conftest import make_context, stage_for


def test_benchmark_sweeps_threads_and_batches(tmp_path, data, loader, trained):
    exported = stage_for(["export"]).execute(make_context(tmp_path / "e", data, loader, trained, ["export"])).artifact
    stages = [{"benchmark": {"threads": [1, 2], "batch_sizes": [1, 8], "warmup": 2, "runs": 20, "op_profile_runs": 5}}]
    result = stage_for(stages).execute(make_context(tmp_path, data, loader, exported, stages))
    rows = result.details["latency"]
    assert [(r["threads"], r["batch_size"]) for r in rows] == [(1, 1), (1, 8), (2, 1), (2, 8)]
    for r in rows:
        assert 0 < r["p50"] <= r["p90"] <= r["p99"] <= r["max"]
        assert r["runs"] == 20 and r["session_init_ms"] > 0 and r["peak_rss_mb"] > 0
    assert result.details["reports"] == {"host": "latency-host.json"}
    raw = json.loads((result.artifact.directory / "latency-host.json").read_text())
    report = validate_report(raw)
    assert len(report.results) == 4
    assert all(len(r.samples_ms) == 20 and r.input_shape[0] == r.batch_size for r in report.results)
    assert report.device.kind == "host" and report.device.onnxruntime
    assert report.context["accuracy"] == result.details["accuracy"] > 0.5
    ops = report.results[0].op_profile
    assert (ops and abs(sum(o.share for o in ops.values()) - 1) < 1e-6 and "Gemm" in ops) or "Conv" in ops
    assert result.artifact.file("model").read_bytes() == exported.file("model").read_bytes()
