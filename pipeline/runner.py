"""The engine: checks the plan, runs stages in order, caches, measures and reports.

Each stage's cache key covers its settings, the outputs of every earlier stage, the source
model, the data, the seed, the device profile and package versions. A stage folder whose
manifest matches the key (and whose files still hash the same) is reused; anything else runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.artifacts import (
    MANIFEST_FILE,
    METRICS_FILE,
    ONNX,
    TORCH,
    Artifact,
    combined_hash,
    commit_dir,
    fresh_temp_dir,
    hash_tree,
    manifest_is_valid,
    read_json,
    sha256_file,
    sweep_leftovers,
    write_json,
)
from pipeline.config import RunConfig, RunGuard, canonical_hash
from pipeline.data import DataSplits, load_data
from pipeline.edgeslim_bench import device_facts
from pipeline.errors import StageFailed, UserError
from pipeline.guard import check_guard_plan, reference_accuracy, run_guard_check, run_guarded
from pipeline.html_report import write_run_html
from pipeline.measure import measure_artifact
from pipeline.onnx_io import check_onnx_file, onnx_logits
from pipeline.report import rich_table, write_report
from pipeline.stage import Stage, StageContext, StageResult, stage_registry
from pipeline.torch_model import ModelLoader

PACKAGES = ("torch", "torch-pruning", "torchao", "onnx", "onnxscript", "onnxruntime", "numpy", "edgeslim")


def source_fingerprint() -> str:
    """sha256 over edgeslim's own code: an edited stage must not reuse results of the old code."""
    import stages

    files = sorted(Path(__file__).parent.glob("*.py")) + sorted(Path(stages.__file__).parent.glob("*.py"))
    return combined_hash({f"{p.parent.name}/{p.name}": sha256_file(p) for p in files})


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "edgeslim_source": source_fingerprint()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def onnx_source(path: Path, data: DataSplits) -> tuple[Artifact, str]:
    """An ONNX file as the run's starting artifact, checked to be safe and to accept the data."""
    check_onnx_file(path, "model.name")
    try:
        outputs = onnx_logits(path, data.example_batch(2))
    except Exception as exc:
        raise UserError(
            f"model.name: {path.name} does not run on the data's inputs {tuple(data.example_batch(2).shape)}: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    if outputs.ndim != 2 or outputs.shape[1] < data.num_classes:
        raise UserError(
            f"model.name: {path.name} outputs shape {outputs.shape}; expected (batch, {data.num_classes}) class scores"
        )
    artifact = Artifact(kind=ONNX, directory=path.parent, meta={"files": {"model": path.name}, "source": "onnx"})
    return artifact, canonical_hash({"onnx_sha256": sha256_file(path)})


def build_stages(config: RunConfig) -> list[Stage]:
    """Instantiate stages and check that each one accepts what the previous one produces."""
    registry = stage_registry()
    stages = [registry[e.type](e.settings) for e in config.stages]
    kind, made_by = (ONNX, "model.name") if config.model.onnx_file else (TORCH, "the model in the config")
    for i, (entry, stage) in enumerate(zip(config.stages, stages, strict=True)):
        where = f"stages[{i}].{entry.type}"
        if config.model.onnx_file is not None and ONNX not in stage.accepts:
            onnx_ready = ", ".join(name for name, cls in registry.items() if ONNX in cls.accepts)
            raise UserError(
                f"{where}: needs a PyTorch model, but model.name is an ONNX file; with an ONNX model the "
                f"stages are: {onnx_ready}"
            )
        if kind not in stage.accepts:
            raise UserError(
                f"{where}: cannot take a '{kind}' model (made by {made_by}); it accepts: {', '.join(stage.accepts)}"
            )
        stage.check_plan(kind, where)
        stage.check_inputs(config, i, where)
        next_accepts = stages[i + 1].accepts if i + 1 < len(stages) else None
        check_guard_plan(config, i, next_accepts, kind)
        kind, made_by = stage.output_kind(kind), f"stages[{i}].{entry.type}"
    if config.guard is not None and not any(e.type == "baseline" for e in config.stages):
        raise UserError("guard: the run-level accuracy guard compares with the baseline; add a '- baseline' stage")
    return stages


@dataclass
class RunLock:
    """One run per output folder, enforced by an OS file lock (``flock``).

    The kernel drops the lock when its process dies, however it dies (SIGKILL, power loss of a
    container), so a lock file left by a killed run is stale by construction and simply taken
    over; a live run's lock cannot be. The file holds the owner's pid, for the messages.
    """

    path: Path
    held: bool = field(default=False, init=False)
    stale_owner: int | None = field(default=None, init=False)  # pid of a dead run whose lock was taken over
    _fd: int | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except PermissionError:
                raise UserError(f"cannot write to output folder {self.path.parent} (permission denied)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                raise UserError(
                    f"{self.path.parent} is in use by another edgeslim run (pid {owner if owner else 'unknown'}); "
                    "wait for it to finish or use another --out"
                ) from None
            if not self._still_the_lock_file(fd):  # the previous owner removed it while we waited: retry
                os.close(fd)
                continue
            self.stale_owner = _read_pid(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._fd, self.held = fd, True
            return self
        raise UserError(f"cannot lock {self.path.parent}")

    def _still_the_lock_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.held and self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # unlink while still holding it, so nobody locks a file on its way out
            os.close(self._fd)
            self._fd, self.held = None, False


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


class Runner:
    def __init__(
        self,
        config: RunConfig,
        out_root: Path,
        *,
        force: bool = False,
        from_stage: str | None = None,
        console: Console | None = None,
    ):
        self.config = config
        self.run_dir = out_root / config.name
        self.console = console or Console(stderr=True)
        self.stages = build_stages(config)
        self.first_forced = 0 if force else (config.stage_index(from_stage) if from_stage else None)
        self.versions = package_versions()

    @staticmethod
    def _file_hashes(stage: Stage, config: RunConfig, where: str) -> dict[str, str]:
        hashes = {}
        for path in stage.input_files(config):
            if not path.is_file():
                raise UserError(f"{where}: file not found: {path}")
            hashes[str(path)] = sha256_file(path)
        return hashes

    def stage_dir(self, index: int) -> Path:
        return self.run_dir / f"{index:02d}-{self.config.stages[index].type}"

    def run(self) -> dict[str, Any]:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output folder {self.run_dir}: {exc.strerror}") from None
        if not os.access(self.run_dir, os.W_OK):
            raise UserError(f"cannot write to output folder {self.run_dir} (permission denied)")
        with RunLock(self.run_dir / ".lock") as lock:
            if lock.stale_owner is not None:
                self.console.print(
                    f"[yellow]⚠ took over the lock of an earlier run (pid {lock.stale_owner}) that is no longer "
                    "running; its unfinished stage is redone[/yellow]"
                )
            removed = sweep_leftovers(self.run_dir)
            if removed:
                self.console.print(f"[dim]removed leftovers of an interrupted run: {', '.join(removed)}[/dim]")
            return self._run_locked()

    def _run_locked(self) -> dict[str, Any]:
        config = self.config
        data = load_data(config.data)
        models = ModelLoader(
            config.model,
            data.input_shape[0],
            data.num_classes,
            data.example_batch(2),
            allow_other_classes=any(stage.replaces_head() for stage in self.stages),
            seed=config.seed,
        )
        if config.model.onnx_file is not None:
            artifact, source_hash = onnx_source(config.model.onnx_file, data)
        else:
            models.source_model()  # fail early (with a clear message) if the model cannot load or run on the data
            source_hash = models.source_hash()
            artifact = Artifact(kind=TORCH, directory=None, meta={})
        report = self._new_report(data)
        earlier: dict[int, Artifact] = {}
        measured: dict[int, dict[str, Any]] = {}
        upstream: list[str] = [source_hash]
        for index, (entry, stage) in enumerate(zip(config.stages, self.stages, strict=True)):
            final = self.stage_dir(index)
            key = canonical_hash(
                {
                    "stage": entry.type,
                    "settings": entry.settings_with_guard(),
                    "upstream": upstream,
                    "data": data.fingerprint,
                    "seed": config.seed,
                    "index": index,
                    "host_profile": config.host.model_dump(mode="json"),
                    "run_settings": stage.run_settings(config),
                    "measure": config.measure.model_dump(mode="json"),
                    "versions": self.versions,
                    "input_files": self._file_hashes(stage, config, f"stages[{index}].{entry.type}"),
                }
            )
            forced = self.first_forced is not None and index >= self.first_forced
            record: dict[str, Any] = {"index": index, "name": entry.type, "dir": final.name}
            if not forced and manifest_is_valid(final, key):
                artifact = Artifact.load(final)
                metrics = read_json(final / METRICS_FILE)
                record.update(status="cached", **metrics)
                self.console.print(f"[dim]↺ {final.name}: unchanged, reusing[/dim]")
            else:
                try:
                    if artifact.kind not in stage.accepts:  # a guard kept an earlier model of another kind
                        raise StageFailed(
                            f"stages[{index}].{entry.type}: cannot take the '{artifact.kind}' model passed on by "
                            f"an accuracy guard; it accepts: {', '.join(stage.accepts)}"
                        )
                    record.update(
                        self._run_stage(
                            index, entry.type, stage, key, upstream, data, models, artifact, earlier, measured
                        )
                    )
                except Exception as exc:
                    message = " ".join(str(exc).split()) or type(exc).__name__
                    report["stages"].append({**record, "status": "failed", "error": message})
                    write_report(self.run_dir, report)
                    write_run_html(self.run_dir)
                    raise
                artifact = Artifact.load(final)
            manifest = read_json(final / MANIFEST_FILE)
            upstream = [*upstream, manifest["output_hash"]]
            earlier[index] = artifact
            measured[index] = record["metrics"]
            report["stages"].append(record)
            write_report(self.run_dir, report)
        if config.guard is not None:
            self._check_run_guard(config.guard, report)
        write_run_html(self.run_dir)
        return report

    def _check_run_guard(self, guard: RunGuard, report: dict[str, Any]) -> None:
        outcome = run_guard_check(guard, report)
        report["guard"] = outcome
        write_report(self.run_dir, report)
        budget = f"max_accuracy_drop {guard.max_accuracy_drop * 100:.2f} pt"
        if outcome["ok"]:
            self.console.print(f"[green]✓ run guard: final model within {budget} of the baseline[/green]")
            return
        summary = (
            f"run guard: the final model ({outcome['final_stage']}) is {outcome['drop'] * 100:.2f} pt below the "
            f"baseline on validation accuracy ({budget})"
        )
        if guard.on_breach == "fail":
            write_run_html(self.run_dir)
            raise StageFailed(f"{summary}; every stage's artifact is kept")
        self.console.print(f"[yellow]⚠ {summary}; deliverable: {outcome['deliverable']}[/yellow]")

    def _run_stage(
        self,
        index: int,
        kind: str,
        stage: Stage,
        key: str,
        upstream: list[str],
        data: DataSplits,
        models: ModelLoader,
        artifact: Artifact,
        earlier: dict[int, Artifact],
        measured: dict[int, dict[str, Any]],
    ) -> dict[str, Any]:
        final = self.stage_dir(index)
        tmp = fresh_temp_dir(final)
        where = f"stages[{index}].{kind}"
        guard = self.config.stages[index].guard
        self.console.print(f"[bold cyan]▶ {final.name}[/bold cyan]")
        started = time.perf_counter()
        try:
            ctx = StageContext(self.config, index, where, data, models, artifact, tmp, dict(earlier))

            def attempt(run: Callable[[StageContext], StageResult]) -> tuple[StageResult, dict[str, Any]]:
                for leftover in tmp.iterdir():  # a retry starts from an empty folder
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
                result = run(ctx)
                produced = result.artifact
                if produced.directory is not None and produced.directory.resolve() != tmp.resolve():
                    raise RuntimeError(f"{where}: stage wrote its artifact outside its folder")
                return result, measure_artifact(produced, self.config, data, models, tmp)

            result, metrics = attempt(stage.run)
            guard_record = None
            if guard is not None:
                reference = reference_accuracy(guard, self.config, index, measured)
                result, metrics, guard_record = run_guarded(guard, stage, ctx, (result, metrics), attempt, reference)
            duration = time.perf_counter() - started
            stage_record = {
                "duration_s": round(duration, 2),
                "metrics": metrics,
                "details": result.details,
                "notes": result.notes,
                **({"guard": guard_record} if guard_record else {}),
            }
            write_json(tmp / METRICS_FILE, stage_record)
            files = hash_tree(tmp)
            output_files = {k: v for k, v in files.items() if k != METRICS_FILE}
            write_json(
                tmp / MANIFEST_FILE,
                {
                    "cache_key": key,
                    "stage": kind,
                    "index": index,
                    "settings_hash": canonical_hash(self.config.stages[index].settings_with_guard()),
                    "upstream": upstream,
                    "data_fingerprint": data.fingerprint,
                    "versions": self.versions,
                    "files": files,
                    "output_hash": combined_hash(output_files),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            commit_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written survives a failure or a kill
            raise
        m = metrics
        self.console.print(
            f"[green]✓ {final.name}[/green] {duration:.1f}s · accuracy {m['accuracy'] * 100:.2f}% · "
            f"{m['size_bytes'] / 1024:.1f} KB · p50 {m['latency_ms']['p50']:.3f} ms"
        )
        return {"status": "ran", **stage_record}

    def _new_report(self, data: DataSplits) -> dict[str, Any]:
        return {
            "run": self.config.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": self.config.to_plain(),
            "config_hash": canonical_hash(self.config.to_plain()),
            "versions": self.versions,
            "device": device_facts(),
            "device_profile": self.config.host.model_dump(mode="json"),
            "data_fingerprint": data.fingerprint,
            "test_samples": len(data.test),
            "stages": [],
        }


def print_summary(report: dict[str, Any], console: Console) -> None:
    console.print(rich_table(report))
