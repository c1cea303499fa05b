"""Two runs on one output folder: the second is refused while the first lives; a lock left by a
killed run is taken over, and the new run finishes the killed one's work."""

from __future__ import annotations

import re
import signal

from edgeslim.engine.store import read_json
from tests.reliability import harness

STAGES = harness.STAGES[:4]  # train .. finetune: enough to hold the lock for a few seconds


def test_second_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    config = harness.write_run_config(tmp_path, STAGES)
    out = tmp_path / "out"
    first = harness.start(config, out)
    assert harness.wait_inside(first, out, 0)
    # freeze the first run inside its train stage: on a slow machine it would otherwise finish
    # training while the second process starts, and the check below would race it
    first.send_signal(signal.SIGSTOP)

    code, stderr = harness.run(config, out)  # while the first one holds the lock
    lines = stderr.strip().splitlines()
    assert code == 2 and "Traceback" not in stderr
    assert re.fullmatch(
        rf"edgeslim: error: {re.escape(str(out / harness.RUN))} is in use by another edgeslim run "
        rf"\(pid {first.pid}\); wait for it to finish or use another --out",
        lines[-1],
    ), stderr
    assert harness.partial_dir(out, 0).is_dir()  # the refused run touched nothing of the first one's work
    assert first.poll() is None

    first.send_signal(signal.SIGKILL)  # ends a stopped process too; the lock file stays behind, naming a dead pid
    first.wait()
    assert (out / harness.RUN / ".lock").read_text() == str(first.pid)

    code, stderr = harness.run(config, out)
    assert code == 0, stderr
    assert f"took over the lock of an earlier run (pid {first.pid}) that is no longer running" in stderr
    assert [s["status"] for s in read_json(out / harness.RUN / "report.json")["stages"]] == ["ran"] * len(STAGES)
    assert not (out / harness.RUN / ".lock").exists()
    assert harness.folder_problems(out) == []
