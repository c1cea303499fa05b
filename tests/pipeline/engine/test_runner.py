"""The runner end to end: every stage, report contents, resume and selective re-runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from edgeslim.api import parse_config
from edgeslim.api import run as run_pipeline
from edgeslim.devices import edgeslim_bench
from edgeslim.engine.runner import RunLock
from edgeslim.engine.store import hash_tree, read_json
from edgeslim.errors import StageFailed, UserError
from tests.conftest import TRAIN, small_config

PTQ_STAGES = [
    {"train": TRAIN},
    "baseline",
    {"prune": {"importance": "hessian", "pruning_ratio": 0.5, "calibration_samples": 64}},
    {"finetune": {"epochs": 3, "batch_size": 32, "distill": {"teacher": "baseline"}}},
    "export",
    {"quantize": {"calibration_samples": 64, "never_slower": False}},  # the INT8 path, even where slower
    {"benchmark": {"runs": 20, "warmup": 2, "batch_sizes": [1, 4]}},
]


def run(out: Path, stages=PTQ_STAGES, devices=None, **kwargs):
    overrides = {"devices": devices} if devices else {}
    return run_pipeline(parse_config(small_config(stages, **overrides)), out, **kwargs).report.to_json()


def statuses(report) -> list[str]:
    return [s["status"] for s in report["stages"]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return out, run(out)


def test_full_pipeline_report(first_run):
    out, report = first_run
    run_dir = out / "t"
    assert statuses(report) == ["ran"] * 7
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert [s["name"] for s in on_disk["stages"]] == [
        "train",
        "baseline",
        "prune",
        "finetune",
        "export",
        "quantize",
        "benchmark",
    ]
    for stage in on_disk["stages"]:
        m = stage["metrics"]
        assert 0 <= m["accuracy"] <= 1 and m["size_bytes"] > 0 and m["params"] > 0
        assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p90"] <= m["latency_ms"]["p99"]
        folder = run_dir / stage["dir"]
        assert (folder / "manifest.json").is_file() and (folder / "metrics.json").is_file()
    by_name = {s["name"]: s["metrics"] for s in on_disk["stages"]}
    assert by_name["baseline"]["accuracy"] > 0.8
    assert by_name["prune"]["params"] < 0.35 * by_name["baseline"]["params"]
    assert by_name["quantize"]["size_bytes"] < by_name["export"]["size_bytes"]
    assert by_name["export"]["accuracy"] == by_name["finetune"]["accuracy"]  # the same model, measured alike
    quantized = onnx.load(str(run_dir / "05-quantize" / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    md = (run_dir / "report.md").read_text()
    assert "| 05-quantize | ran |" in md and "## Versions" in md and "torch: 2.13.0" in md
    assert "x faster vs previous" in md and "side by side" in md
    assert on_disk["versions"]["torch"].startswith("2.13.0")


def test_every_stage_is_timed_beside_the_previous_stage_and_the_baseline(first_run):
    """Both speed-ups with their intervals in every record, from samples taken in the same rounds."""
    out, report = first_run
    stages = report["stages"]
    for i, stage in enumerate(stages):
        m = stage["metrics"]
        low, high = m["latency_p50_ci_ms"]  # 10 real timings: no tighter claim than this is safe here
        assert min(m["latency_samples_ms"]) <= low <= high <= max(m["latency_samples_ms"])
        assert m["latency_rounds"] == 10 and m["latency_runs"] == 10
        prev, ref = m.get("speedup_vs_previous"), m.get("speedup_vs_reference")
        assert (prev is None) == (i == 0) and (ref is None) == (i <= 1)  # train precedes the baseline
        for s, against in ((prev, stages[i - 1]["dir"]), (ref, "01-baseline")):
            if s is not None:
                assert s["against"] == against and 0 < s["ci_low"] <= s["ci_high"] and s["ratio"] > 0
                assert s["confidence"] == 0.95 and s["verdict"] in ("faster", "slower (regression)", "within noise")
    cache = read_json(out / "t" / "measurements.json")
    assert set(cache["02-prune"]["beside"]) == {"previous", "reference"}
    assert set(cache["01-baseline"]["beside"]) == {"previous"} and cache["00-train"]["beside"] == {}


def test_rerun_reuses_everything_and_changes_nothing(first_run):
    out, _ = first_run
    people = ("report.json", "report.md", "report.html")  # they say "cached" now
    before = hash_tree(out / "t", exclude=people)
    report = run(out)
    assert statuses(report) == ["cached"] * 7
    assert [s["measured"] for s in report["stages"]] == ["cached"] * 7  # nothing timed again
    assert hash_tree(out / "t", exclude=people) == before


def test_changed_finetune_setting_reruns_finetune_and_later_only(first_run):
    out, _ = first_run
    changed = [*PTQ_STAGES]
    changed[3] = {"finetune": {"epochs": 2, "batch_size": 32, "distill": {"teacher": "baseline"}}}
    report = run(out, changed)
    assert statuses(report) == ["cached"] * 3 + ["ran"] * 4
    report = run(out, changed)
    assert statuses(report) == ["cached"] * 7


def test_device_profiles_rerun_only_the_benchmark(first_run, tmp_path):
    out, _ = first_run
    run(out)
    final = out / "t" / "06-benchmark"
    remote = tmp_path / "pi4.json"
    cmd = [sys.executable, edgeslim_bench.__file__, str(final / "model.onnx"), "--runs", "5", "--warmup", "1"]
    subprocess.run([*cmd, "--device-profile", "pi4", "-o", str(remote)], check=True, capture_output=True)
    devices = ["host", {"remote": {"report": str(remote)}}]
    report = run(out, devices=devices)
    assert statuses(report) == ["cached"] * 6 + ["ran"]
    bench = report["stages"][-1]
    assert bench["details"]["reports"] == {"host": "latency-host.json", "pi4": "latency-pi4.json"}
    assert bench["details"]["remote"]["pi4"]["same_model"] is True
    assert (final / "latency-pi4.json").read_bytes() != b""
    # the same path with new contents is a new input: only the benchmark runs again
    subprocess.run([*cmd, "--device-profile", "pi4", "-o", str(remote)], check=True, capture_output=True)
    assert statuses(run(out, devices=devices)) == ["cached"] * 6 + ["ran"]
    assert statuses(run(out, devices=devices)) == ["cached"] * 7
    remote.write_text('{"schema": "something else"}')
    with pytest.raises(UserError, match=r"pi4\.json: not an edgeslim latency report: schema"):
        run(out, devices=devices)


def test_from_stage_and_force(first_run):
    out, _ = first_run
    run(out)  # back to the original settings
    assert statuses(run(out, from_stage="quantize")) == ["cached"] * 5 + ["ran"] * 2
    assert statuses(run(out, from_stage="5")) == ["cached"] * 5 + ["ran"] * 2


def test_tampered_artifact_is_redone(first_run):
    out, _ = first_run
    weights = out / "t" / "02-prune" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated file
    report = run(out)
    assert statuses(report)[:2] == ["cached", "cached"] and statuses(report)[2] == "ran"


def test_interrupted_stage_leaves_nothing_and_is_redone(tmp_path, monkeypatch):
    stages = [{"train": {"epochs": 2, "batch_size": 32}}, "baseline", "export"]
    run(tmp_path, stages)
    import edgeslim.stages.export as export_module

    def interrupted(self, ctx, cfg):
        (ctx.out_dir / "model.onnx").write_bytes(b"half-writ")
        raise KeyboardInterrupt

    before = hash_tree(tmp_path / "t" / "02-export")
    monkeypatch.setattr(export_module.Export, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stages, from_stage="export")
    assert hash_tree(tmp_path / "t" / "02-export") == before  # the previous result is intact
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.endswith(".partial")]
    assert not (tmp_path / "t" / ".lock").exists()
    monkeypatch.undo()
    assert statuses(run(tmp_path, stages)) == ["cached", "cached", "cached"]


def test_qat_pipeline_exports_real_int8(tmp_path):
    stages = [
        {"train": TRAIN},
        "baseline",
        {"prune": {"importance": "l2"}},
        {"finetune": {"epochs": 2, "batch_size": 32, "qat": True, "distill": {"teacher": "baseline"}}},
        "export",
    ]
    report = run(tmp_path, stages)
    by_name = {s["name"]: s for s in report["stages"]}
    export = by_name["export"]
    assert export["details"]["parity"]["top1_agreement"] >= 0.99
    model = onnx.load(str(tmp_path / "t" / "04-export" / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert json.loads((tmp_path / "t" / "04-export" / "artifact.json").read_text())["kind"] == "onnx-int8"
    # The finetune stage is measured by its INT8 deployable, so both rows agree.
    assert by_name["finetune"]["metrics"]["size_bytes"] == export["metrics"]["size_bytes"]
    assert abs(by_name["finetune"]["metrics"]["accuracy"] - export["metrics"]["accuracy"]) <= 0.01


def test_report_command_rerenders_markdown(first_run):
    out, _ = first_run
    md = out / "t" / "report.md"
    md.unlink()
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, "-m", "edgeslim.cli", "report", str(out / "t")],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "06-benchmark" in proc.stdout and md.is_file()


def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path):
    lock = tmp_path / ".lock"
    with RunLock(lock), pytest.raises(UserError, match=r"in use by another edgeslim run \(pid \d+\)"):
        RunLock(lock).__enter__()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # a run that was killed
    with RunLock(lock) as taken:
        assert taken.held and lock.read_text() == str(os.getpid())
    assert not lock.exists()


def test_teacher_file_contents_are_part_of_the_cache_key(tmp_path):
    from safetensors.torch import load_file, save_file

    first = [{"train": {**TRAIN, "epochs": 2}}, "baseline"]
    run(tmp_path, first)
    teacher = tmp_path / "teacher.safetensors"
    weights = load_file(str(tmp_path / "t" / "01-baseline" / "model.safetensors"))
    save_file(weights, str(teacher))
    stages = [*first, {"finetune": {"epochs": 1, "batch_size": 64, "distill": {"teacher": str(teacher)}}}]
    assert statuses(run(tmp_path, stages))[-1] == "ran"
    assert statuses(run(tmp_path, stages))[-1] == "cached"
    save_file({k: v * 1.01 if v.is_floating_point() else v for k, v in weights.items()}, str(teacher))
    assert statuses(run(tmp_path, stages)) == ["cached", "cached", "ran"]  # same path, new bytes


def test_checkpoint_adapted_to_a_new_task_end_to_end(tmp_path, trained):
    checkpoint = trained.directory / "model.safetensors"
    cfg = small_config(
        [
            "baseline",
            {"prune": {"importance": "l1", "pruning_ratio": 0.25}},
            {"finetune": {"epochs": 3, "batch_size": 32, "head": {}, "optimizer": {"lr": 0.003}}},
            {"prune": {"importance": "l2", "pruning_ratio": 0.25}},
            "export",
        ],
        model={"name": "tiny_cnn", "checkpoint": str(checkpoint), "kwargs": {"num_classes": 10}},
        data={"name": "tests.helpers.factories:digits_parity"},
    )
    report = run_pipeline(parse_config(cfg), tmp_path).report.to_json()
    assert statuses(report) == ["ran"] * 5
    edits = json.loads((tmp_path / "t" / "03-prune" / "pruning_history.json").read_text())
    assert any(isinstance(e, dict) and e["head"]["num_classes"] == 2 for e in edits)  # prune → head → prune
    assert report["stages"][-1]["metrics"]["accuracy"] > 0.6  # the exported 2-class model works


def test_class_mismatch_without_a_head_is_a_clear_error(tmp_path, trained):
    cfg = small_config(
        ["baseline"],
        model={
            "name": "tiny_cnn",
            "checkpoint": str(trained.directory / "model.safetensors"),
            "kwargs": {"num_classes": 10},
        },
        data={"name": "tests.helpers.factories:digits_parity"},
    )
    with pytest.raises(UserError, match=r"must return logits of shape \(batch, 2\); got \(2, 10\) \(to adapt it"):
        run_pipeline(parse_config(cfg), tmp_path).report.to_json()


def test_a_failure_inside_a_library_is_one_line_with_the_traceback_in_the_log(tmp_path, monkeypatch):
    """Not a user mistake and not a check: a crash inside a library a stage calls (exit 1), named."""
    import json as json_module

    import edgeslim.stages.export as export_module

    monkeypatch.setattr(export_module.Export, "run", lambda self, ctx, cfg: json_module.loads("{"))
    with pytest.raises(StageFailed) as info:
        run(tmp_path, ["export"])
    log = tmp_path / "t" / "error.log"
    message = str(info.value)
    assert message.startswith("stages[0].export: JSONDecodeError: Expecting property name enclosed in double quotes")
    assert message.endswith(f"(in json (decoder.py:{_line_of_raise(log)}); traceback in {log})")
    assert "Traceback" in log.read_text()
    report = read_json(tmp_path / "t" / "report.json")
    assert report["stages"][0]["status"] == "failed"


def _line_of_raise(log) -> int:
    """The line number of the innermost frame in a traceback written to ``log``."""
    import re

    return int(re.findall(r'File ".*?", line (\d+)', log.read_text())[-1])


class _BrokenBlock(torch.nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], 7, -1)  # a shape bug that only shows on this data


class _UsersNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.block = _BrokenBlock()
        self.broken = False

    def forward(self, x):
        h = self.body(x)
        return self.block(h) if self.broken else h


def test_a_crash_in_the_users_model_is_one_line_naming_the_module_and_exits_2(tmp_path, monkeypatch):
    """A failure raised in the user's own code (their model's forward) is the input's fault: exit 2,
    and the line says which part of the model and where, the traceback going to error.log."""
    import edgeslim
    import edgeslim.stages.export as export_module

    real = export_module.Export.run

    def break_then_export(self, ctx, cfg):
        model = ctx.models.load(ctx.input)
        model.broken = True
        model(ctx.data.example_batch())
        return real(self, ctx, cfg)

    monkeypatch.setattr(export_module.Export, "run", break_then_export)
    cfg = small_config(["baseline", "export"])
    with pytest.raises(UserError) as info:
        edgeslim.run(cfg, out=tmp_path, model=_UsersNet())
    message, log = str(info.value), tmp_path / "t" / "error.log"
    assert info.value.exit_code == 2 and "\n" not in message
    assert message.startswith("stages[1].export: RuntimeError: shape '[2, 7, -1]' is invalid")
    assert f"test_runner.py:{_line_of_raise(log)} in _BrokenBlock.forward; traceback in {log})" in message
    assert read_json(tmp_path / "t" / "report.json")["stages"][0]["status"] == "ran"  # kept


@pytest.mark.parametrize("on_slower", ["warn", "fail"])
def test_the_latency_guard_names_or_stops_a_stage_slower_than_its_input(tmp_path, monkeypatch, on_slower):
    """Timing is made deterministic here: the prune stage's model is timed 3x slower than the
    baseline's in every round, so the whole interval of the ratio lies below 1."""
    from edgeslim.engine import runner

    real = runner.measure_side_by_side

    def slow_prune(models, host, spec, data):
        fields = real(models, host, spec, data)
        if Path(models[0]).parent.name.endswith("prune"):
            fields[0]["latency_samples_ms"] = [3 * v for v in fields[1]["latency_samples_ms"]]
        return fields

    monkeypatch.setattr(runner, "measure_side_by_side", slow_prune)
    stages = [{"train": TRAIN}, "baseline", {"prune": {"pruning_ratio": 0.3, "calibration_samples": 32}}]
    cfg = parse_config(small_config(stages, latency_guard={"on_slower": on_slower}))
    if on_slower == "warn":
        report = run_pipeline(cfg, tmp_path).report
        assert report.stages[2].metrics.speedup_vs_previous.slower
        assert "02-prune is slower than 01-baseline" in (tmp_path / "t" / "report.md").read_text()
        return
    with pytest.raises(
        StageFailed, match=r"^latency guard: 02-prune's model is slower than 01-baseline's, its input: 0\.3"
    ):
        run_pipeline(cfg, tmp_path)
    assert (tmp_path / "t" / "02-prune" / "manifest.json").exists()  # nothing made is lost
    assert [s["status"] for s in read_json(tmp_path / "t" / "report.json")["stages"]] == ["ran", "ran", "ran"]
