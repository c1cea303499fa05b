"""The arm64 emulation environment: the runner under qemu agrees with the host, and the cache holds.

The emulated tests build the environment once (about a minute, ~400 MB under the edgeslim cache)
and reuse it on later runs; they skip with the reason where emulation is unavailable.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits

from edgeslim.devices import arm64
from edgeslim.devices.arm64 import CORES, Arm64Env, EmulationUnavailable, ensure_env, run_bench
from edgeslim.devices.edgeslim_bench import create_session
from edgeslim.devices.latency_report import validate_report

FEW_RUNS = ["--warmup", "1", "--runs", "3"]


class TinyNet(torch.nn.Module):
    """A conv and a linear layer: enough to exercise ARM's conv, GEMM and INT8 kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def env() -> Arm64Env:
    try:
        return ensure_env()
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Real 8x8 digit images in [0, 1], NCHW float32, and their labels."""
    data = load_digits()
    return (data.images[:, None] / 16.0).astype(np.float32), data.target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]) -> dict[str, Path]:
    """TinyNet briefly trained on digits (so logits have real margins), as FP32 and INT8 QDQ ONNX."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    images, labels = digits
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = torch.from_numpy(images[:1200]), torch.from_numpy(labels[:1200])
    for _ in range(5):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    net.eval()
    folder = tmp_path_factory.mktemp("arm64_models")
    fp32 = folder / "tiny.onnx"
    with warnings.catch_warnings():  # the exporter's notes about optional packages
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (x[:2],),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            input_names=["input"],
            output_names=["logits"],
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        assert program is not None
        program.save(str(fp32), external_data=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"input": images[i : i + 1]} for i in range(32))

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    int8 = folder / "tiny_int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ)
    return {"fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def test_inputs(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]) -> Path:
    """Held-out digits (not used in training or calibration) as the runner's --inputs file."""
    path = tmp_path_factory.mktemp("arm64_inputs") / "digits.npy"
    np.save(path, digits[0][1500:1628])
    return path


def host_outputs(model: Path, inputs: Path) -> np.ndarray:
    """The host side as the benchmark stage computes it: exact INT8 arithmetic on x86 CPUs without VNNI,
    whose default U8S8 kernels saturate (with them, outputs here were a few rounding steps off ARM's)."""
    session = create_session(str(model))
    return session.run(None, {session.get_inputs()[0].name: np.load(inputs)})[0]


def emulated_outputs(env: Arm64Env, core: str, model: Path, inputs: Path, tmp_path: Path) -> tuple[dict, np.ndarray]:
    out = tmp_path / f"{model.stem}_{core}.npy"
    report = run_bench(env, core, model, ["--inputs", str(inputs), "--save-outputs", str(out), *FEW_RUNS])
    return report, np.load(out)


@pytest.mark.parametrize("core", CORES)
def test_fp32_report_and_parity_under_emulation(
    env: Arm64Env, models: dict[str, Path], test_inputs: Path, tmp_path: Path, core: str
) -> None:
    report, arm = emulated_outputs(env, core, models["fp32"], test_inputs, tmp_path)
    parsed = validate_report(report, f"arm64 {core} report")
    assert parsed.device.kind == "arm64-emulated"
    assert parsed.device.emulated is True
    assert parsed.device.machine == "aarch64"
    assert core in parsed.device.cpu
    assert parsed.device.onnxruntime == env.onnxruntime == ort.__version__
    assert parsed.results[0].runs == 3
    host = host_outputs(models["fp32"], test_inputs)
    assert arm.shape == host.shape == (128, 10)
    assert float(np.abs(arm - host).max()) < 1e-4
    np.testing.assert_array_equal(arm.argmax(1), host.argmax(1))


@pytest.mark.parametrize("core", ["cortex-a53", "cortex-a76"])  # the A76 has dot-product INT8 kernels
def test_int8_qdq_parity_under_emulation(
    env: Arm64Env, models: dict[str, Path], test_inputs: Path, tmp_path: Path, core: str
) -> None:
    report, arm = emulated_outputs(env, core, models["int8"], test_inputs, tmp_path)
    validate_report(report)
    host = host_outputs(models["int8"], test_inputs)
    assert (arm.argmax(1) == host.argmax(1)).mean() == 1.0
    assert float(np.abs(arm - host).max()) < 0.05  # at most a rounding step of the output scale apart


def test_second_ensure_env_is_cached_and_fast(env: Arm64Env) -> None:
    start = time.perf_counter()
    again = ensure_env()
    assert time.perf_counter() - start < 5
    assert again == env
    assert (env.root.parent / arm64.MANIFEST).is_file()


def test_missing_qemu_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = arm64.shutil.which
    monkeypatch.setattr(arm64.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(arm64.shutil, "which", lambda name, *a, **k: None if "qemu" in name else real_which(name))
    with pytest.raises(EmulationUnavailable, match=r"qemu-aarch64-static not found: apt-get install qemu-user-static"):
        ensure_env(tmp_path / "cache", log=lambda _: None)
    assert not (tmp_path / "cache").exists()  # nothing downloaded or created


def test_already_aarch64_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(arm64.platform, "machine", lambda: "aarch64")
    with pytest.raises(EmulationUnavailable, match=r"already aarch64.*natively"):
        ensure_env(tmp_path / "cache", log=lambda _: None)


def test_unknown_core_names_the_allowed_ones(tmp_path: Path) -> None:
    dummy = Arm64Env(root=tmp_path, site=tmp_path, qemu="qemu", python="/usr/bin/python3.11", onnxruntime="0")
    with pytest.raises(ValueError, match="cortex-a53, cortex-a72, cortex-a76"):
        run_bench(dummy, "cortex-x1", tmp_path / "m.onnx", [])
    with pytest.raises(ValueError, match="--kind"):
        run_bench(dummy, "cortex-a72", tmp_path / "m.onnx", ["--kind", "host"])


# ---- the cache logic, with the slow build replaced by a fake one (runs anywhere, in milliseconds)


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace qemu lookup and the build with a fake that writes a complete-looking environment."""
    calls: list[Path] = []

    def build(work: Path, qemu: str, ort_version: str, log: object) -> dict[str, object]:
        calls.append(work)
        time.sleep(0.2)  # long enough for a second builder to arrive and wait on the lock
        for rel in ("root/usr/bin/python3.11", "site/onnxruntime/__init__.py", "site/numpy/__init__.py"):
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text("")
        for core in CORES:
            (work / "cores" / core / "proc").mkdir(parents=True)
            (work / "cores" / core / "proc" / "cpuinfo").write_text(arm64._cpuinfo(core, 1))
        manifest = {"format": arm64.FORMAT, "python": "/usr/bin/python3.11", "onnxruntime": ort_version}
        manifest |= {"build_seconds": 0.2, "size_mb": 0}
        (work / arm64.MANIFEST).write_text(json.dumps(manifest))
        return manifest

    monkeypatch.setattr(arm64, "_check_platform", lambda: None)
    monkeypatch.setattr(arm64, "_find_qemu", lambda: "/usr/bin/qemu-aarch64-static")
    monkeypatch.setattr(arm64, "_build", build)
    return calls


def test_cache_discards_half_built_folders_and_builds_once(fake_build: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / ".build-999-1" / "root").mkdir(parents=True)  # left by a killed build
    first = ensure_env(cache, log=lambda _: None)
    assert not (cache / ".build-999-1").exists()
    assert first.root == cache / "env" / "root" and first.python == "/usr/bin/python3.11"
    assert ensure_env(cache, log=lambda _: None) == first
    assert len(fake_build) == 1 and not list(cache.glob(".build-*"))


def test_cache_rebuilds_an_incomplete_or_outdated_environment(fake_build: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = ensure_env(cache, log=lambda _: None)
    (env.site / "numpy" / "__init__.py").unlink()
    os.rmdir(env.site / "numpy")
    ensure_env(cache, log=lambda _: None)
    manifest = json.loads((cache / "env" / arm64.MANIFEST).read_text())
    (cache / "env" / arm64.MANIFEST).write_text(json.dumps({**manifest, "onnxruntime": "0.0.1"}))
    ensure_env(cache, log=lambda _: None)
    assert len(fake_build) == 3
    assert not list(cache.glob(".trash-*")) and not list(cache.glob(".build-*"))


def test_concurrent_callers_build_once(fake_build: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    results: list[Arm64Env] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_env(cache, log=lambda _: None))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_build) == 1
    assert len(results) == 3 and len(set(results)) == 1


def test_failed_build_leaves_nothing_behind(fake_build: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def broken(work: Path, *_: object) -> dict[str, object]:
        (work / "root").mkdir(parents=True)
        raise EmulationUnavailable("debootstrap from http://mirror failed: E: Failed getting release file")

    monkeypatch.setattr(arm64, "_build", broken)
    with pytest.raises(EmulationUnavailable, match="Failed getting release file"):
        ensure_env(tmp_path / "cache", log=lambda _: None)
    assert not list((tmp_path / "cache").glob(".build-*")) and not (tmp_path / "cache" / "env").exists()


def test_host_files_shadowed_by_the_rootfs_are_copied(tmp_path: Path) -> None:
    prefix, host = tmp_path / "prefix", tmp_path / "host" / "model.onnx"
    host.parent.mkdir()
    host.write_bytes(b"host")
    (host.parent / "model.onnx.data").write_bytes(b"weights")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert arm64._visible(host, prefix, scratch) == host  # not under the prefix: seen as is
    shadow = Path(str(prefix) + str(host))
    shadow.parent.mkdir(parents=True)
    shadow.write_bytes(b"rootfs")
    seen = arm64._visible(host, prefix, scratch)
    assert seen != host and seen.read_bytes() == b"host" and (seen.parent / "model.onnx.data").is_file()
