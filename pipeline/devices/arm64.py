"""A cached 64-bit ARM user-mode emulation environment for the ``arm64-emulated`` device profile.

Nobody has a Cortex-A53 on their desk, but qemu's user mode can run an aarch64 Python with the
aarch64 builds of numpy and ONNX Runtime on this x86_64 machine. That shows whether a model
loads and gives the same answers on ARM (different kernels: NEON, dot-product INT8), long before
it reaches a device. It does not show how fast it is: emulation runs tens to hundreds of times
slower than the real core, and not in proportion to it.

The environment is a minimal Debian arm64 root file system (``debootstrap --foreign``, unpacked
with ``dpkg-deb``: no second stage, so no root-only chroot step) plus a ``site`` folder of aarch64
wheels of the host's ONNX Runtime version. It is built once (under a minute, ~400 MB) under
:func:`default_cache_dir` and reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import importlib.metadata
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeslim.devices import cache_home
from edgeslim.engine.children import run_child

CORES = ("cortex-a53", "cortex-a72", "cortex-a76")

# Our core names mapped to qemu's ``-cpu`` names (``qemu-aarch64-static -cpu help``).
QEMU_CPU = {"cortex-a53": "cortex-a53", "cortex-a72": "cortex-a72", "cortex-a76": "cortex-a76"}

# What a real /proc/cpuinfo says for each core. ONNX Runtime's CPU detection (pytorch/cpuinfo)
# parses /proc/cpuinfo and crashes on the host's x86 one, so each core gets a fake aarch64 one.
# ``Features`` follow qemu's model of the core (what getauxval(AT_HWCAP) reports under it), and
# ``model name`` carries the core's name into the report's ``device.cpu``.
_CPUINFO = {
    "cortex-a53": {
        "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid",
        "variant": "0x0",
        "part": "0xd03",
        "revision": "4",
    },
    "cortex-a72": {
        "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid",
        "variant": "0x0",
        "part": "0xd08",
        "revision": "3",
    },
    "cortex-a76": {
        "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
        "asimddp",
        "variant": "0x4",
        "part": "0xd0b",
        "revision": "1",
    },
}
DEFAULT_CORE = "cortex-a72"

FORMAT = 1  # bump when the recipe changes: older cached environments are then rebuilt
SUITE = "bookworm"  # Debian 12: Python 3.11, like the pipeline, so the cp311 wheels fit
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MANIFEST = "manifest.json"
INSTALL_HINT = "apt-get install qemu-user-static debootstrap"
BENCH_SCRIPT = Path(__file__).with_name("edgeslim_bench.py")
# Runner arguments whose values are host files the emulated Python must open.
_FILE_ARGS = ("--inputs", "--save-outputs")
# Host variables that would confuse the guest: x86 libraries to preload, another Python, qemu overrides.
_DROP_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")


class EmulationUnavailable(Exception):
    """Raised with a one-line human reason (e.g. 'qemu-aarch64-static not found: apt-get install
    qemu-user-static debootstrap') when emulation cannot be set up here."""


@dataclass(frozen=True)
class Arm64Env:
    """A built environment: what :func:`run_bench` needs to start the aarch64 Python."""

    root: Path  # the arm64 rootfs
    site: Path  # aarch64 site-packages (numpy, onnxruntime)
    qemu: str  # path of qemu-aarch64-static
    python: str  # interpreter path inside root, e.g. "/usr/bin/python3.11"
    onnxruntime: str  # version installed in site


def default_cache_dir() -> Path:
    """``$EDGESLIM_CACHE/arm64``, else ``~/.cache/edgeslim/arm64``: outside the repo, shared by runs."""
    return cache_home() / "arm64"


# --------------------------------------------------------------------------- checks


def _check_platform() -> None:
    """Emulation needs Linux (qemu user mode) on x86_64; on aarch64 the runner runs natively."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        raise EmulationUnavailable(
            f"this machine is already {machine}: run edgeslim_bench.py natively (device kind 'host'), "
            "no emulation needed"
        )
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        raise EmulationUnavailable(
            f"arm64 emulation needs Linux on x86_64 (qemu user mode); this is {platform.system()} {platform.machine()}"
        )


def _find_qemu() -> str:
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if not qemu:
        raise EmulationUnavailable(f"qemu-aarch64-static not found: {INSTALL_HINT}")
    return qemu


def _host_onnxruntime() -> str:
    """The host's ONNX Runtime version: the emulated one must be the same for parity to mean anything."""
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    raise EmulationUnavailable("onnxruntime is not installed on the host: the emulated one must match its version")


def _host_numpy() -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version("numpy")
    return None


@functools.lru_cache(maxsize=8)
def _qemu_facts(qemu: str) -> tuple[str, frozenset[str]]:
    """qemu's version and the ``-cpu`` names it knows (these vary across qemu releases)."""
    try:
        version = subprocess.run([qemu, "-version"], capture_output=True, text=True, timeout=30).stdout
        cpus = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmulationUnavailable(f"{qemu} does not run: {exc}") from None
    match = re.search(r"version\s+(\S+)", version)
    names = frozenset(line.split()[0] for line in cpus.splitlines()[1:] if line.strip())
    return (match.group(1) if match else "unknown"), names


# --------------------------------------------------------------------------- building


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run_tool(cmd: list[str], what: str, timeout_s: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run one build step; a failure becomes EmulationUnavailable naming the step and its last output line."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired:
        raise EmulationUnavailable(f"{what} timed out after {timeout_s:.0f} s") from None
    except OSError as exc:
        raise EmulationUnavailable(f"{what} could not start: {exc}") from None
    if proc.returncode != 0:
        raise EmulationUnavailable(f"{what} failed: {_last_line(proc.stderr + proc.stdout)}")
    return proc


def _rmtree(path: Path) -> None:
    """Remove a tree even where dpkg left folders without write permission."""

    def retry(func: Callable[..., object], failed: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            parent = os.path.dirname(failed)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
        with contextlib.suppress(FileNotFoundError):
            func(failed)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=retry)
    elif os.path.lexists(path):  # a file, link or device node
        path.unlink()


def _debootstrap(root: Path, mirror: str, log: Callable[[str], None]) -> None:
    """Download a minimal arm64 Debian with Python and unpack every package (no second stage)."""
    debootstrap = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)), None
    )
    if not debootstrap:
        raise EmulationUnavailable(f"debootstrap not found: {INSTALL_HINT}")
    dpkg_deb = shutil.which("dpkg-deb")
    if not dpkg_deb:
        raise EmulationUnavailable("dpkg-deb not found: apt-get install dpkg")
    cmd = [debootstrap, "--arch=arm64", "--foreign", "--variant=minbase", "--include=python3"]
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    if keyring.is_file():
        cmd.append(f"--keyring={keyring}")
    cmd += [SUITE, str(root), mirror]
    if os.geteuid() != 0:  # debootstrap refuses to run as a user; fakeroot is enough for --foreign
        fakeroot = shutil.which("fakeroot")
        if not fakeroot:
            raise EmulationUnavailable("debootstrap needs root: run once as root or apt-get install fakeroot")
        cmd.insert(0, fakeroot)
    log(f"arm64: debootstrap {SUITE} arm64 from {mirror}")
    _run_tool(cmd, f"debootstrap from {mirror} (set EDGESLIM_DEBIAN_MIRROR for another mirror)", 1800)

    archives = root / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    if not debs:
        raise EmulationUnavailable(f"debootstrap left no packages in {archives}")
    log(f"arm64: unpacking {len(debs)} packages")
    for deb in debs:
        _run_tool([dpkg_deb, "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}", 300)
        deb.unlink()  # the packages are unpacked: keeping them would double the size
    # Device nodes may not open on a nodev cache folder; without them qemu falls back to the host's /dev.
    for entry in (root / "dev").iterdir():
        _rmtree(entry)
    _rmtree(root / "debootstrap")


def _guest_python(root: Path) -> tuple[str, str]:
    """The rootfs' ``python3.X``: its path inside the root and its ``X.Y`` version (for the wheel tags)."""
    found = sorted(
        (p for p in (root / "usr" / "bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name)),
        key=lambda p: int(p.name.split(".")[1]),
    )
    if not found:
        raise EmulationUnavailable(f"the {SUITE} arm64 rootfs has no /usr/bin/python3.X")
    return f"/usr/bin/{found[-1].name}", found[-1].name.removeprefix("python")


def _pip_install(site: Path, py_version: str, ort: str, numpy: str | None, log: Callable[[str], None]) -> None:
    """aarch64 wheels of the host's ONNX Runtime (and numpy) for the guest Python."""
    tag = py_version.replace(".", "")
    base = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
    base += ["--target", str(site), "--only-binary=:all:", "--implementation", "cp"]
    # Without the manylinux_2_28 tag pip silently settles on a years-old onnxruntime.
    base += ["--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64"]
    base += ["--python-version", tag, "--abi", f"cp{tag}"]
    if py_version != f"{sys.version_info[0]}.{sys.version_info[1]}":
        base.append("--no-compile")  # the host Python would write byte code the guest cannot use
    log(f"arm64: pip install aarch64 wheels onnxruntime=={ort} numpy{'==' + numpy if numpy else ''}")
    attempts = [[f"onnxruntime=={ort}", f"numpy=={numpy}"]] if numpy else []
    attempts.append([f"onnxruntime=={ort}", "numpy"])  # the host's numpy may have no aarch64 wheel
    for i, reqs in enumerate(attempts):
        try:
            _run_tool(base + reqs, f"pip install of aarch64 {' '.join(reqs)}", 1200)
            return
        except EmulationUnavailable:
            if i == len(attempts) - 1:
                raise
            _rmtree(site)


def _cpuinfo(core: str, n_cpus: int) -> str:
    """A /proc/cpuinfo as an aarch64 kernel writes it, one block per host CPU qemu passes through."""
    facts = _CPUINFO[core]
    block = (
        "processor\t: {i}\n"
        f"model name\t: {core} (qemu-aarch64 emulation)\n"
        "BogoMIPS\t: 108.00\n"
        f"Features\t: {facts['features']}\n"
        "CPU implementer\t: 0x41\n"
        "CPU architecture: 8\n"
        f"CPU variant\t: {facts['variant']}\n"
        f"CPU part\t: {facts['part']}\n"
        f"CPU revision\t: {facts['revision']}\n\n"
    )
    return "".join(block.format(i=i) for i in range(max(1, n_cpus)))


def _write_text(path: Path, text: str) -> None:
    """Atomic write: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _make_core_views(env_dir: Path, root: Path) -> None:
    """One ``-L`` prefix per core: links to the shared rootfs plus the core's own /proc/cpuinfo.

    A single rootfs with one cpuinfo would make concurrent runs on different cores race on it.
    The links are relative so the environment stays valid after its folder is renamed into place.
    """
    n_cpus = os.cpu_count() or 1
    _write_text(root / "proc" / "cpuinfo", _cpuinfo(DEFAULT_CORE, n_cpus))  # for callers using -L root
    for core in CORES:
        view = env_dir / "cores" / core
        view.mkdir(parents=True, exist_ok=True)
        for entry in root.iterdir():
            if entry.name != "proc":
                (view / entry.name).symlink_to(Path("..", "..", root.name, entry.name))
        _write_text(view / "proc" / "cpuinfo", _cpuinfo(core, n_cpus))


def _core_prefix(env: Arm64Env, core: str) -> Path:
    view = env.root.parent / "cores" / core
    return view if (view / "proc" / "cpuinfo").is_file() else env.root


def _python_exe(env: Arm64Env) -> Path:
    """The interpreter as a host path: qemu opens the program file itself without the -L prefix."""
    python = Path(env.python)
    return python if python.is_relative_to(env.root) else env.root / env.python.lstrip("/")


def _guest_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith("QEMU_")}
    # The cache stays read-only at run time: byte code was compiled at build time.
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _smoke_test(env: Arm64Env, core: str) -> dict[str, str]:
    """Import numpy and onnxruntime under qemu before the environment is declared complete."""
    code = (
        "import json, platform, numpy, onnxruntime; "
        "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
        "'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__, "
        "'providers': onnxruntime.get_available_providers()}))"
    )
    cmd = [env.qemu, "-cpu", QEMU_CPU[core], "-L", str(_core_prefix(env, core)), str(_python_exe(env)), "-c", code]
    proc = _run_tool(cmd, f"the emulated Python ({core})", 600, env=_guest_env(env.site))
    facts = json.loads(_last_line(proc.stdout))
    if facts["machine"] != "aarch64" or facts["onnxruntime"] != env.onnxruntime:
        raise EmulationUnavailable(
            f"the emulated Python reports {facts}, expected aarch64 onnxruntime {env.onnxruntime}"
        )
    return facts


def _build(work: Path, qemu: str, ort: str, log: Callable[[str], None]) -> dict[str, object]:
    """Build a complete environment in ``work``; returns its manifest (written last)."""
    started = time.monotonic()
    mirror = os.environ.get("EDGESLIM_DEBIAN_MIRROR", DEFAULT_MIRROR)
    root, site = work / "root", work / "site"
    work.mkdir(parents=True)
    _debootstrap(root, mirror, log)
    python, py_version = _guest_python(root)
    if py_version != "3.11":
        log(f"arm64: note: the {SUITE} rootfs has Python {py_version}, not 3.11; using cp{py_version} wheels")
    _pip_install(site, py_version, ort, _host_numpy(), log)
    if py_version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        # Debian compiles byte code in postinst scripts, which never ran: compile the stdlib here,
        # natively, so each emulated start does not compile it (slowly) again.
        log("arm64: compiling the guest standard library")
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j", "0", str(root / "usr" / "lib" / f"python{py_version}")],
            capture_output=True,
            timeout=600,
        )
    _make_core_views(work, root)
    env = Arm64Env(root=root, site=site, qemu=qemu, python=python, onnxruntime=ort)
    log("arm64: checking numpy and onnxruntime import under qemu")
    facts = _smoke_test(env, DEFAULT_CORE)
    qemu_version, _ = _qemu_facts(qemu)
    manifest: dict[str, object] = {
        "format": FORMAT,
        "suite": SUITE,
        "arch": "arm64",
        "mirror": mirror,
        "python": python,
        "python_version": facts["python"],
        "onnxruntime": facts["onnxruntime"],
        "numpy": facts["numpy"],
        "qemu_version": qemu_version,
        "cores": list(CORES),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.monotonic() - started, 1),
        "size_mb": round(sum(f.stat().st_size for f in work.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20),
    }
    _write_text(work / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _load_env(env_dir: Path, qemu: str, ort: str) -> tuple[Arm64Env | None, str]:
    """The cached environment if it is complete and current, else None and why not."""
    try:
        manifest = json.loads((env_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "no complete environment"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest ({exc})"
    if manifest.get("format") != FORMAT:
        return None, f"built by an older recipe (format {manifest.get('format')})"
    if manifest.get("onnxruntime") != ort:
        return None, f"built for onnxruntime {manifest.get('onnxruntime')}, the host has {ort}"
    env = Arm64Env(
        root=env_dir / "root", site=env_dir / "site", qemu=qemu, python=str(manifest["python"]), onnxruntime=ort
    )
    needed = [_python_exe(env), env.site / "onnxruntime", env.site / "numpy"]
    needed += [env_dir / "cores" / core / "proc" / "cpuinfo" for core in CORES]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        return None, f"incomplete (missing {missing[0]})"
    return env, "ok"


@contextlib.contextmanager
def _locked(cache_dir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One builder at a time, across processes: the others wait, then reuse its result."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fh = open(cache_dir / ".lock", "a+")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise EmulationUnavailable(f"cannot use the cache folder {cache_dir} ({exc}); set EDGESLIM_CACHE") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"arm64: another process is building the environment in {cache_dir}; waiting")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_env(cache_dir: Path | None = None, log: Callable[[str], None] = print) -> Arm64Env:
    """Build once and reuse: the environment is built in a temp folder next to its final place and
    renamed into place when complete (a stamp/manifest JSON records versions); a file lock (fcntl)
    stops two processes building at once; a half-built folder from a killed build is discarded and
    rebuilt. Raises EmulationUnavailable with the reason when a tool is missing, the platform is not
    Linux x86_64 (or already aarch64 — then say so), or a download fails."""
    _check_platform()
    qemu = _find_qemu()
    ort = _host_onnxruntime()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    env_dir = cache_dir / "env"
    with _locked(cache_dir, log):
        env, why = _load_env(env_dir, qemu, ort)
        if env is not None:
            return env
        # We hold the lock, so any build folder left here belongs to a build that was killed.
        for stale in [*cache_dir.glob(".build-*"), *cache_dir.glob(".trash-*")]:
            log(f"arm64: discarding {stale.name}, left by a build or swap that was killed")
            with contextlib.suppress(OSError):  # a killed build's orphaned child may still be writing
                _rmtree(stale)
        log(f"arm64: building the emulation environment in {env_dir} ({why}); one time, about a minute, ~400 MB")
        work = cache_dir / f".build-{os.getpid()}-{int(time.time())}"
        try:
            manifest = _build(work, qemu, ort, log)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                _rmtree(work)
            if isinstance(exc, OSError):  # e.g. the disk filled up
                raise EmulationUnavailable(f"building the arm64 environment in {work} failed: {exc}") from None
            raise
        if env_dir.exists() or env_dir.is_symlink():  # an outdated or broken one: swap, then delete
            trash = cache_dir / f".trash-{os.getpid()}-{int(time.time())}"
            os.replace(env_dir, trash)
            os.replace(work, env_dir)
            _rmtree(trash)
        else:
            os.replace(work, env_dir)
        log(f"arm64: ready in {manifest['build_seconds']} s ({manifest['size_mb']} MB)")
        env, why = _load_env(env_dir, qemu, ort)
        if env is None:
            raise EmulationUnavailable(f"the freshly built environment in {env_dir} is {why}")
        return env


# --------------------------------------------------------------------------- running


def _shadowed(prefix: Path, host_path: Path) -> bool:
    """True when qemu would open the rootfs' file instead of the host's.

    qemu's ``-L`` redirects an absolute path only where that path exists under the prefix, so host
    files (``/tmp/...``, ``/home/...``) are seen as they are, unless the rootfs has the same file.
    """
    return os.path.lexists(str(prefix) + str(host_path))


def _visible(path: Path, prefix: Path, scratch: Path) -> Path:
    """An absolute path of ``path`` that the emulated process sees as the host file."""
    path = Path(os.path.abspath(path))
    if not _shadowed(prefix, path):
        return path
    copy_dir = Path(tempfile.mkdtemp(dir=scratch, prefix="in-"))
    for sibling in path.parent.glob(glob.escape(path.name) + "*"):  # e.g. model.onnx.data next to the model
        if sibling.is_file():
            shutil.copy2(sibling, copy_dir / sibling.name)
    return copy_dir / path.name


def _split_args(bench_args: list[str]) -> list[tuple[str, str | None]]:
    """``--x v`` and ``--x=v`` as (flag, value) pairs for the flags that take host files."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(bench_args):
        arg = bench_args[i]
        flag, eq, value = arg.partition("=")
        if flag in _FILE_ARGS and eq:
            pairs.append((flag, value))
        elif arg in _FILE_ARGS and i + 1 < len(bench_args):
            pairs.append((arg, bench_args[i + 1]))
            i += 1
        else:
            pairs.append((arg, None))
        i += 1
    return pairs


def run_bench(env: Arm64Env, core: str, model: Path, bench_args: list[str], timeout_s: float = 900) -> dict:
    """Run pipeline/devices/edgeslim_bench.py under qemu for ``core`` and return its parsed report.

    Always passes ``--kind arm64-emulated`` and ``--output`` (a temp file); ``bench_args`` are the
    runner's other options, e.g. ``['--inputs', X, '--save-outputs', Y, '--runs', '3']``. Host paths
    work as they are (see :func:`_shadowed`); relative ones are taken from the current folder.
    Raises ValueError for an unknown core, RuntimeError with the last stderr line on failure.
    """
    if core not in CORES:
        raise ValueError(f"unknown core {core!r}: choose one of {', '.join(CORES)}")
    for arg in bench_args:
        if arg.partition("=")[0] in ("--kind", "--output", "-o"):
            raise ValueError(f"run_bench sets {arg.partition('=')[0]} itself; leave it out of bench_args")
    qemu_version, qemu_cpus = _qemu_facts(env.qemu)
    if QEMU_CPU[core] not in qemu_cpus:
        raise EmulationUnavailable(
            f"qemu-aarch64 {qemu_version} cannot emulate {core}; it offers {', '.join(sorted(qemu_cpus))}"
        )
    prefix = _core_prefix(env, core)
    with tempfile.TemporaryDirectory(prefix="edgeslim-arm64-") as tmp:
        scratch = Path(tmp)
        if _shadowed(prefix, scratch):
            raise RuntimeError(f"the arm64 rootfs {prefix} shadows the temp folder {scratch}")
        args: list[str] = []
        moves: list[tuple[Path, Path]] = []  # outputs written to scratch because the rootfs shadows their path
        for flag, value in _split_args(bench_args):
            if value is None:
                args.append(flag)
            elif flag == "--inputs":
                args += [flag, str(_visible(Path(value), prefix, scratch))]
            else:  # --save-outputs
                target = Path(os.path.abspath(value))
                target = target if target.suffix == ".npy" else target.with_name(target.name + ".npy")  # as np.save
                if _shadowed(prefix, target):
                    moves.append((scratch / f"out-{len(moves)}.npy", target))
                    target = moves[-1][0]
                args += [flag, str(target)]
        if not any(a.partition("=")[0] == "--device-profile" for a in args):
            args += ["--device-profile", f"arm64-emulated-{core}"]
        report_path = scratch / "report.json"
        cmd = [env.qemu, "-cpu", QEMU_CPU[core], "-L", str(prefix), str(_python_exe(env))]
        cmd += [str(_visible(BENCH_SCRIPT, prefix, scratch)), str(_visible(Path(model), prefix, scratch))]
        cmd += ["--kind", "arm64-emulated", "--output", str(report_path), *args]
        try:
            proc = run_child(
                cmd, capture_output=True, text=True, timeout=timeout_s, cwd=scratch, env=_guest_env(env.site)
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"edgeslim_bench under qemu-aarch64 ({core}) timed out after {timeout_s:.0f} s"
            ) from None
        if proc.returncode != 0 or not report_path.is_file():
            raise RuntimeError(
                f"edgeslim_bench under qemu-aarch64 ({core}) failed with exit code {proc.returncode}: "
                f"{_last_line(proc.stderr or proc.stdout)}"
            )
        report = json.loads(report_path.read_text())
        for src, dst in moves:
            shutil.move(src, dst)
    device = report.get("device", {})
    if core not in str(device.get("cpu", "")):  # a qemu that synthesizes /proc/cpuinfo itself names no core
        device["cpu"] = f"{core} (qemu-aarch64 emulation; reported: {device.get('cpu')})"
    report.setdefault("notes", []).append(
        f"emulated: qemu-aarch64 {qemu_version} -cpu {QEMU_CPU[core]}; outputs are meaningful, latencies are not "
        "(emulation runs tens to hundreds of times slower than the core)"
    )
    return report
