"""Files and folders a bad-input case needs, made fresh for each case.

A setup is a context manager ``setup(case_dir, out_dir, template) -> out_dir``: it may write files
into ``case_dir`` (configs reference them as ``{case}/...``), prepare the output folder, and
return the output folder the run must use. ``template`` is the run folder of an earlier,
successful run (its artifacts must survive every case byte for byte).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from safetensors.torch import save_file

from tests.helpers.factories import small_mlp

Setup = Callable[[Path, Path, Path], contextlib.AbstractContextManager[Path]]
SETUPS: dict[str, Setup] = {}


def setup(fn: Callable[[Path, Path, Path], Iterator[Path]]) -> Setup:
    SETUPS[fn.__name__] = contextlib.contextmanager(fn)
    return SETUPS[fn.__name__]


def _template_onnx(template: Path) -> Path:
    return template / "t" / "00-baseline" / "deploy.onnx"


def _tiny_cnn_weights(template: Path) -> Path:
    return template / "t" / "00-baseline" / "model.safetensors"


# ---------------------------------------------------------------- checkpoints


@setup
def truncated_safetensors(case: Path, out: Path, template: Path) -> Iterator[Path]:
    data = _tiny_cnn_weights(template).read_bytes()
    (case / "model.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted download
    yield out


@setup
def garbage_safetensors(case: Path, out: Path, template: Path) -> Iterator[Path]:
    (case / "model.safetensors").write_bytes(os.urandom(4096))
    yield out


@setup
def absurd_safetensors(case: Path, out: Path, template: Path) -> Iterator[Path]:
    """A header that declares a 4 TB tensor over 16 bytes of data."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    (case / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    yield out


@setup
def mismatched_checkpoint(case: Path, out: Path, template: Path) -> Iterator[Path]:
    save_file(small_mlp().state_dict(), str(case / "model.safetensors"))  # weights of another architecture
    yield out


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@setup
def pickle_checkpoint(case: Path, out: Path, template: Path) -> Iterator[Path]:
    state = {"conv.weight": torch.zeros(1), "payload": _Exploit(case / "PWNED")}
    torch.save(state, case / "model.pt")
    yield out


@setup
def pickle_teacher(case: Path, out: Path, template: Path) -> Iterator[Path]:
    torch.save({"payload": _Exploit(case / "PWNED")}, case / "teacher.pt")
    yield out


# ---------------------------------------------------------------- ONNX files


@setup
def truncated_onnx(case: Path, out: Path, template: Path) -> Iterator[Path]:
    data = _template_onnx(template).read_bytes()
    (case / "model.onnx").write_bytes(data[: len(data) // 3])
    yield out


@setup
def text_as_onnx(case: Path, out: Path, template: Path) -> Iterator[Path]:
    (case / "model.onnx").write_text("this is not a model\n")
    yield out


def _with_external_data(case: Path, template: Path, location: str, data_file: Path) -> None:
    """The template model with its largest initializer moved to external data at ``location``."""
    model = onnx.load(str(_template_onnx(template)))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(data_file.stat().st_size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(case / "model" / "model.onnx"))


@setup
def onnx_external_parent(case: Path, out: Path, template: Path) -> Iterator[Path]:
    (case / "model").mkdir()
    _with_external_data(case, template, "../secret.bin", case / "secret.bin")
    yield out


@setup
def onnx_external_absolute(case: Path, out: Path, template: Path) -> Iterator[Path]:
    (case / "model").mkdir()
    _with_external_data(case, template, str(case / "elsewhere" / "weights.bin"), case / "elsewhere" / "weights.bin")
    yield out


@setup
def onnx_external_symlink(case: Path, out: Path, template: Path) -> Iterator[Path]:
    (case / "model").mkdir()
    _with_external_data(case, template, "weights.bin", case / "outside.bin")
    (case / "model" / "weights.bin").symlink_to(case / "outside.bin")
    yield out


@setup
def onnx_absurd_dims(case: Path, out: Path, template: Path) -> Iterator[Path]:
    """An initializer that claims 10^15 floats over a few hundred stored bytes."""
    model = onnx.load(str(_template_onnx(template)))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    del tensor.dims[:]
    tensor.dims.extend([10**5, 10**5, 10**5])
    onnx.save(model, str(case / "model.onnx"))
    yield out


@setup
def onnx_wrong_input(case: Path, out: Path, template: Path) -> Iterator[Path]:
    """A valid model that expects 3x32x32 images (the data is 1x8x8)."""
    weight = numpy_helper.from_array(torch.zeros(10, 3 * 32 * 32).numpy(), "w")
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Flatten", ["input"], ["flat"]),
            onnx.helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1),
        ],
        "wrong_input",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        [weight],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(case / "model.onnx"))
    yield out


# ---------------------------------------------------------------- other files


@setup
def garbage_remote_report(case: Path, out: Path, template: Path) -> Iterator[Path]:
    (case / "phone.json").write_text('{"schema": "edgeslim.latency-report/1", "results": [')
    yield out


@setup
def empty_config_file(case: Path, out: Path, template: Path) -> Iterator[Path]:
    yield out


# ---------------------------------------------------------------- the output folder


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        raise OSError(f"mount failed: {proc.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@setup
def unwritable_out(case: Path, out: Path, template: Path) -> Iterator[Path]:
    """The earlier run's folder, now read-only: a read-only mount as root (root ignores modes), chmod otherwise."""
    if _can_mount():
        with contextlib.suppress(OSError), _tmpfs(case / "mnt", "16m") as mnt:
            shutil.copytree(out, mnt / "out")
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
            yield mnt / "out"
            return
    for path in [out, *out.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    try:
        yield out
    finally:
        for path in [out, *out.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


@setup
def full_disk(case: Path, out: Path, template: Path) -> Iterator[Path]:
    """The earlier run's folder on a small tmpfs filled to the last few KB, so the next stage's writes fail."""
    if not _can_mount():
        raise NotImplementedError("needs root to mount a tmpfs; the injected-error variant covers this elsewhere")
    with _tmpfs(case / "mnt", "4m") as mnt:
        shutil.copytree(out, mnt / "out")
        free = shutil.disk_usage(mnt).free
        with open(mnt / "filler", "wb") as fh:  # leave 16 KB: the lock and small JSON files still fit
            fh.write(b"\0" * max(0, free - 16 * 1024))
        yield mnt / "out"


@setup
def out_is_a_file(case: Path, out: Path, template: Path) -> Iterator[Path]:
    blocker = case / "out-file"
    blocker.write_text("not a folder\n")
    yield blocker
