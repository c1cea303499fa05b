"""Kill a real run inside every stage with SIGKILL, rerun, and check that nothing was lost or
redone, that no partial file survives, and that the result equals an uninterrupted run's.

The kill points are random (seed ``EDGESLIM_KILL_SEED``, default 0, printed on failure);
``bench/reliability.py`` repeats this at many more points and writes docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal

import pytest

from edgeslim.engine.store import read_json
from tests.reliability import harness

KILL_SEED = int(os.environ.get("EDGESLIM_KILL_SEED", "0"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run in a fresh process: the result every interrupted run must reach."""
    root = tmp_path_factory.mktemp("reference")
    config = harness.write_run_config(root)
    code, stderr = harness.run(config, root / "out")
    assert code == 0, stderr
    return root / "out", config


def durations(out) -> list[float]:
    return [s["duration_s"] for s in read_json(out / harness.RUN / "report.json")["stages"]]


def test_sigkill_inside_every_stage_then_resume(reference, tmp_path):
    ref_out, config = reference
    rng = random.Random(KILL_SEED)
    out = tmp_path / "out"
    kills = []
    for index, seconds in enumerate(durations(ref_out)):
        before = harness.stage_stamps(out) if (out / harness.RUN).is_dir() else {}
        kill = harness.kill_inside(config, out, index, delay_s=rng.uniform(0, 0.3 * seconds))
        for _ in range(3):  # the stage ran faster than in the reference run: redo it (--from) and aim earlier
            if kill.landed == f".{harness.STAGE_DIRS[index]}.partial":
                break
            before = {
                name: stamp for name, stamp in harness.stage_stamps(out).items() if name < harness.STAGE_DIRS[index]
            }
            kill = harness.kill_inside(
                config, out, index, kill.delay_s / 4, signal.SIGKILL, "--from", harness.STAGE_DIRS[index][3:]
            )
        kills.append(kill)
        context = f"seed {KILL_SEED}, {kill}"
        assert kill.landed == f".{harness.STAGE_DIRS[index]}.partial", context
        assert kill.orphans == [], context
        after = harness.stage_stamps(out)
        # Stages finished before the previous kill were reused, not redone; the stage that was
        # killed last time was finished by this run; the killed stage left no finished folder.
        for name in before:
            assert after[name] == before[name], f"{name} was redone ({context})"
        # (after a --from retry, the killed stage's earlier finished result is still there, untouched)
        assert set(harness.STAGE_DIRS[:index]) <= set(after) <= set(harness.STAGE_DIRS[: index + 1]), context

    code, stderr = harness.run(config, out)
    assert code == 0, stderr
    assert "removed leftovers of an interrupted run: .06-benchmark.partial" in stderr
    resumed, uninterrupted = harness.stage_outcomes(out), harness.stage_outcomes(ref_out)
    assert [r["status"] for r in resumed] == ["cached"] * 6 + ["ran"]
    for got, want in zip(resumed, uninterrupted, strict=True):
        assert got["accuracy"] == want["accuracy"], got["dir"]  # tolerance 0: CPU runs are bit-identical
        assert (got["size_bytes"], got["params"], got["model_sha256"]) == (
            want["size_bytes"],
            want["params"],
            want["model_sha256"],
        ), got["dir"]
        if got["dir"] != harness.STAGE_DIRS[-1]:  # the benchmark's files hold its own latency samples
            assert got["output_hash"] == want["output_hash"], got["dir"]
    assert harness.folder_problems(out) == []


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_and_sigterm_stop_cleanly_and_keep_the_previous_result(reference, tmp_path, sig, code, word):
    """Interrupt a forced re-run of finetune: one line, the partial folder is gone, the old result stays."""
    ref_out, config = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    before = {d: harness.hash_tree(out / harness.RUN / d) for d in harness.STAGE_DIRS}
    proc = harness.start(config, out, "--from", "finetune")
    assert harness.wait_inside(proc, out, 3)
    proc.send_signal(sig)
    returncode, stderr = harness.finish(proc)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    assert re.fullmatch(rf"edgeslim: {word}; finished stages are kept and a rerun resumes from there", lines[-1])
    assert [p.name for p in (out / harness.RUN).glob(".*")] == []  # no partial folder, no lock
    assert {d: harness.hash_tree(out / harness.RUN / d) for d in harness.STAGE_DIRS} == before
