"""The offline HTML report: plots present, numbers embedded, nothing external, Pareto and emulated right."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from rich.console import Console

from edgeslim.reports.compare import (
    EMULATED_NOTE,
    Comparison,
    compare,
    load_entries,
    pareto_front,
    rich_tables,
    to_markdown,
)
from edgeslim.reports.html import (
    DATA_ID,
    PLOT_LATENCY,
    PLOT_OPS,
    PLOT_PARETO,
    PLOT_SIZE,
    RUN_HTML,
    render,
    write_html,
    write_run_html,
)
from tests.pipeline.reports.test_compare import fake_run, latency_samples, make_report, measurement, write

OPS = {
    "Conv": {"mean_ms_per_run": 0.5, "nodes_per_run": 2, "share": 0.625},
    "Gemm": {"mean_ms_per_run": 0.2, "nodes_per_run": 1, "share": 0.25},
    "Relu": {"mean_ms_per_run": 0.1, "nodes_per_run": 2, "share": 0.125},
}
# label: (latency scale, accuracy). On host, 'base', 'fast' and 'best' are on the Pareto front;
# 'dominated' is slower and less accurate than 'fast'.
MODELS = {"base": (1.0, 0.90), "fast": (0.6, 0.88), "dominated": (0.8, 0.85), "best": (1.3, 0.95)}


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text of the JSON data block."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data_text = ""
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_data = tag == "script" and dict(attrs).get("id") == DATA_ID

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data_text += data

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False


def parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    return tags


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    folder = tmp_path_factory.mktemp("reports")
    paths = []
    for seed, (label, (scale, accuracy)) in enumerate(MODELS.items()):
        report = make_report(
            label,
            [measurement(latency_samples(scale, seed), op_profile=OPS if label in ("base", "fast") else None)],
            accuracy=accuracy,
            size_bytes=int(100_000 * scale),
        )
        paths.append(write(folder / f"{label}.json", report))
    for seed, label in enumerate(("base", "fast"), start=10):  # the same models on an emulated arm64 board
        emulated = make_report(
            label,
            [measurement(latency_samples(20.0, seed))],
            profile="arm64-cortex-a72",
            kind="arm64-emulated",
            cpu="QEMU virtual CPU",
            accuracy=MODELS[label][1],
            size_bytes=int(100_000 * MODELS[label][0]),
        )
        paths.append(write(folder / f"{label}-arm.json", emulated))
    return compare(load_entries(paths))


@pytest.fixture(scope="module")
def page(comparison: Comparison) -> str:
    return render(comparison)


def test_pareto_front_function():
    points = [(1.0, 0.90), (0.6, 0.88), (0.8, 0.85), (1.3, 0.95), (1.3, 0.95), (1.4, 0.95), (0.6, 0.80)]
    assert pareto_front(points) == [True, True, False, True, True, False, False]
    assert pareto_front([]) == [] and pareto_front([(2.0, 0.5)]) == [True]


def test_page_has_every_plot_as_an_embedded_png(page):
    images = {attrs.get("id"): attrs for tag, attrs in parse(page).tags if tag == "img"}
    assert set(images) == {PLOT_LATENCY, PLOT_PARETO, PLOT_SIZE, PLOT_OPS}
    for plot_id, attrs in images.items():
        assert attrs.get("alt"), plot_id
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,"), plot_id
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000, plot_id


def test_page_references_nothing_outside_itself(page):
    for tag, attrs in parse(page).tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"\s*(https?:)?//", value), f"<{tag} {name}={value[:60]}>"
        assert tag != "link" and not (tag == "script" and attrs.get("src")), tag
    assert "http://" not in page and "https://" not in page


def test_data_block_holds_the_numbers(page, comparison):
    data = json.loads(parse(page).data_text)
    assert data["baseline"] == "base" and data["min_effect"] == 0.02 and data["confidence"] == 0.95
    assert len(data["rows"]) == len(comparison.rows)
    for row, shown in zip(comparison.rows, data["rows"], strict=True):
        e = row.entry
        assert (shown["model"], shown["device"], shown["threads"], shown["batch_size"]) == (
            e.model,
            e.device,
            e.threads,
            e.batch_size,
        )
        assert shown["p50"] == e.p50 and shown["p90"] == e.p90 and shown["p99"] == e.p99
        assert shown["speedup"] == row.speedup and shown["verdict"] == row.verdict
        assert shown["p10"] == pytest.approx(float(np.percentile(e.samples, 10)))
        assert shown["accuracy"] == e.accuracy and shown["size_bytes"] == e.size_bytes
    assert data["sizes"] == {"base": 100_000, "fast": 60_000, "dominated": 80_000, "best": 130_000}
    assert [p["model"] for p in data["op_profiles"]] == ["base", "fast"]
    assert data["op_profiles"][0]["ops"]["Conv"]["mean_ms_per_run"] == 0.5


def test_pareto_membership_and_emulated_devices_left_out(page):
    data = json.loads(parse(page).data_text)
    assert data["pareto"] == {"host · 1 thread · batch 1": ["base", "fast", "best"]}
    by_key = {(r["model"], r["device"]): r for r in data["rows"]}
    assert [by_key[(m, "host")]["pareto"] for m in MODELS] == [True, True, False, True]
    assert by_key[("fast", "arm64-cortex-a72")]["pareto"] is None
    assert by_key[("fast", "arm64-cortex-a72")]["emulated"] is True


def test_emulated_devices_labelled_everywhere(page, comparison):
    emulated_rows = re.findall(r'<tr class="[^"]*emulated">(.*?)</tr>', page)
    assert len(emulated_rows) == 2 and all(EMULATED_NOTE in row for row in emulated_rows)
    assert f"arm64-cortex-a72: {EMULATED_NOTE}" in page
    assert to_markdown(comparison).count(EMULATED_NOTE) >= 3  # both rows and the footer
    console = Console(width=300, record=True)
    for table in rich_tables(comparison):
        console.print(table)
    assert console.export_text().count(EMULATED_NOTE) == 2


def test_chromium_renders_the_page(tmp_path, comparison):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed: cannot check that the page renders headless")
    page = write_html(comparison, tmp_path / "compare.html")
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,2000"]
    subprocess.run([*cmd, page.resolve().as_uri()], capture_output=True, timeout=60, check=False, cwd=tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and plots, not one colour


def test_run_html_survives_failed_stages_and_missing_reports(tmp_path):
    run = fake_run(tmp_path / "r")
    path = write_run_html(run)
    assert path == run / RUN_HTML and path.is_file()
    page = path.read_text()
    data = json.loads(parse(page).data_text)
    assert data["baseline"] == "r/01-baseline"
    assert "r/02-prune" not in {r["model"] for r in data["rows"]}  # the failed stage is skipped
    assert any("'pi5' skipped" in w for w in data["warnings"])
    assert EMULATED_NOTE in page and not list(run.glob(".report.html.*"))  # atomic write leaves no temp file


def test_run_html_without_measured_stages(tmp_path):
    run_dir = tmp_path / "empty"
    failed = {"index": 0, "name": "train", "dir": "00-train", "status": "failed", "error": "out of memory"}
    write(run_dir / "report.json", {"run": "empty", "created": "now", "stages": [failed], "device": {}})
    page = write_run_html(run_dir).read_text()
    assert "No measured stages yet" in page and "edgeslim run &#x27;empty&#x27;" in page


def test_noise_rule_and_warnings_on_the_page(tmp_path, comparison):
    assert "Noise rule:" in render(comparison)
    a = write(tmp_path / "a.json", make_report("a", [measurement(batch_size=1)]))
    b = write(tmp_path / "b.json", make_report("b", [measurement(batch_size=4)]))
    warned = render(compare(load_entries([a, b])))
    assert '<p class="warning">⚠ batch sizes differ on host' in warned
