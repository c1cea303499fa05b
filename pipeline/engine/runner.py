"""The engine's loop. For each stage of a checked plan:

1. compute its stage key (``keys.stage_key``);
2. reuse its folder when the manifest matches the key and its files still hash the same, else
   run it (under its accuracy guard) into a hidden folder, evaluate the model, and commit;
3. time the model side by side with the previous measured stage's and the reference stage's
   models (interleaved rounds, one worker process) unless the measurement cache already has it
   under the same measurement key (``keys.measurement_key``: every timed file's sha256), and derive
   its p50 interval and both speed-ups with their bootstrap intervals from the samples;
4. emit a ``StageRecord``: ``report.json`` is rewritten and every listener is told.

The runner writes ``report.json`` only; people-facing reports (report.md, HTML) are written by
listeners the CLI and API pass in, so report code never decides what is recomputed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgeslim.config.schema import RunConfig, RunGuard, canonical_hash
from edgeslim.data.datasets import DataSplits, load_data
from edgeslim.devices.edgeslim_bench import device_facts
from edgeslim.engine import distributed, keys
from edgeslim.engine.evaluate import evaluate_artifact
from edgeslim.engine.guard import reference_accuracy, run_guarded
from edgeslim.engine.lock import RunLock
from edgeslim.engine.measure import measure_side_by_side
from edgeslim.engine.plan import PlannedStage, build_plan, onnx_source
from edgeslim.engine.progress import silence
from edgeslim.engine.records import REPORT_JSON, RunReport, StageRecord
from edgeslim.engine.run_guard import run_guard_check
from edgeslim.engine.stage import Role, Stage, StageContext, StageResult
from edgeslim.engine.stats import DEFAULT_CONFIDENCE, DEFAULT_MIN_EFFECT, MIN_SAMPLES, median_interval, ratio_of_medians
from edgeslim.engine.store import (
    MANIFEST_FILE,
    METRICS_FILE,
    TORCH,
    Artifact,
    combined_hash,
    commit_dir,
    fresh_temp_dir,
    hash_tree,
    manifest_is_valid,
    partial_dir,
    read_json,
    stage_label,
    sweep_leftovers,
    write_json,
    write_text,
)
from edgeslim.errors import StageFailed, UserError, culprit, first_line
from edgeslim.models.loader import ModelLoader

ERROR_LOG = "error.log"  # the traceback of the last unexpected failure
# the measurement cache: stage folder -> {key, latency fields, samples of the models timed beside it}
MEASUREMENTS_FILE = "measurements.json"
Listener = Callable[[Path, RunReport], None]  # told after every change of the run's report


@dataclass
class _Made:
    """A stage's committed output: its artifact and what was recorded when it was made."""

    artifact: Artifact
    output_hash: str
    record: dict[str, Any]  # metrics.json: duration, evaluation, details, notes, guard


@dataclass(frozen=True)
class _Timed:
    """A measured stage's deployable model, for the stages timed beside it later."""

    label: str
    path: Path
    sha256: str
    reference: bool


# who a stage is timed beside -> the metrics field of its speed-up against them
PARTNERS = {"previous": "speedup_vs_previous", "reference": "speedup_vs_reference"}


class Runner:
    def __init__(
        self,
        config: RunConfig,
        out_root: Path,
        *,
        force: bool = False,
        from_stage: str | None = None,
        console: Console | None = None,
        listeners: Sequence[Listener] = (),
    ):
        self.config = config
        self.run_dir = out_root / config.name
        self.console = console or Console(stderr=True)
        self.planned = build_plan(config)
        self.first_forced = 0 if force else (config.stage_index(from_stage) if from_stage else None)
        self.versions = keys.package_versions(hugging_face=config.model.hf is not None)
        # each stage's code version, hashed once: its key and its manifest both record it
        self.code_versions = {p.index: keys.stage_code_version(type(p.stage)) for p in self.planned}
        self.listeners = list(listeners)
        self.has_reference = any(p.stage.role == Role.REFERENCE for p in self.planned)
        self.world = distributed.current()  # rank 0 of 1 unless started under torchrun

    def _tell(self, order: distributed.Order) -> None:
        """Rank 0 of a distributed run: send the other ranks their next order."""
        if self.world.size > 1:
            distributed.broadcast(order)

    def stage_dir(self, index: int) -> Path:
        return self.run_dir / stage_label(index, self.config.stages[index].type)

    def run(self) -> RunReport:
        if not self.world.writer:
            return self._follow()
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
            report = self._run_locked()
        self._tell(distributed.Order("end", report=report))
        return report

    def _follow(self) -> RunReport:
        """A rank other than 0: run the training stages rank 0 orders, with it, and write nothing.

        Each order brings the stage (with the settings rank 0 runs it with), its input model and the
        earlier models it may read; the stage writes into a scratch folder that is thrown away."""
        silence()
        config, where = self.config, "run"
        data, models = self._data_and_models()
        try:
            while True:
                order: distributed.Order = distributed.broadcast()
                if order.kind == "end":
                    return order.report
                where = self.planned[order.index].where
                with tempfile.TemporaryDirectory(prefix=f"edgeslim-rank{self.world.rank}-") as scratch:
                    root = Path(scratch)
                    artifact = order.input.unpack(root / "input") if order.input else None
                    earlier = {i: a.unpack(root / f"earlier-{i}") for i, a in order.earlier.items()}
                    out = root / "out"
                    out.mkdir()
                    ctx = StageContext(config, order.index, where, data, models, artifact, out, earlier)
                    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                        order.stage.execute(ctx)
        except (UserError, StageFailed):
            raise
        except Exception as exc:
            raise self._unexpected(where, exc) from exc

    # ------------------------------------------------------------------ the loop

    def _data_and_models(self) -> tuple[DataSplits, ModelLoader]:
        """The run's data (one validating pass) and the loader of its models."""
        config = self.config
        data = load_data(config.data)
        models = ModelLoader(
            config.model,
            data.in_channels,
            data.num_classes,
            data.example_batch(2),
            allow_other_classes=any(p.plan.changes_classes for p in self.planned),
            seed=config.seed,
        )
        return data, models

    def _run_locked(self) -> RunReport:
        config = self.config
        data, models = self._data_and_models()
        if config.model.onnx_file is not None:
            artifact, source_hash = onnx_source(config.model.onnx_file, data)
        else:
            models.source_model()  # fail early (with a clear message) if the model cannot load or run on the data
            source_hash = models.source_hash()
            artifact = Artifact(kind=TORCH, directory=None, meta={})
        report = self._new_report(data)
        earlier: dict[int, Artifact] = {}
        measured: dict[int, dict[str, Any]] = {}
        timed: list[_Timed] = []
        upstream: list[str] = [source_hash]
        measurements = self._load_measurements()
        for planned in self.planned:
            index, entry = planned.index, config.stages[planned.index]
            final = self.stage_dir(index)
            key = self._stage_key(planned, upstream, data)
            identity = {"index": index, "name": entry.type, "role": str(planned.stage.role), "dir": final.name}
            forced = self.first_forced is not None and index >= self.first_forced
            try:
                if not forced and manifest_is_valid(final, key):
                    made, status = self._reuse(final), "cached"
                else:
                    made = self._make(planned, key, upstream, data, models, artifact, earlier, measured)
                    status = "ran"
                partners = self._partners(timed)
                latency, how = self._measure(final, made.record["metrics"], data, measurements, partners)
            except Exception as exc:
                failure = exc if isinstance(exc, UserError | StageFailed) else self._unexpected(planned.where, exc)
                error = " ".join(str(failure).split()) or type(exc).__name__
                report.stages.append(StageRecord(**identity, status="failed", error=error))
                self._publish(report)
                if failure is exc:
                    raise
                raise failure from exc
            record = StageRecord.model_validate(
                {
                    **identity,
                    **made.record,
                    "status": status,
                    "measured": how,
                    "metrics": {**made.record["metrics"], **latency},
                }
            )
            self._check_latency(record, timed[-1] if timed else None, report)
            artifact = made.artifact
            upstream = [*upstream, made.output_hash]
            earlier[index] = artifact
            measured[index] = made.record["metrics"]
            deployable = final / made.record["metrics"]["deployable"]
            sha = made.record["metrics"]["model_sha256"]
            timed.append(_Timed(final.name, deployable, sha, planned.stage.role == Role.REFERENCE))
            report.stages.append(record)
            self._publish(report)
        self._save_measurements(measurements)
        if config.guard is not None:
            self._check_run_guard(config.guard, report)
        return report

    def _unexpected(self, where: str, exc: Exception) -> StageFailed | UserError:
        """A failure inside a user's model or a library: one line naming the stage, where it happened and
        the cause for the terminal, the whole traceback in the run's ``error.log``. Raised in the user's
        own code (their model's forward, their data factory) it is the input's fault: exit 2.
        In a distributed run, a collective that failed because another rank stopped says so instead;
        rank N logs to ``error.rankN.log`` (the only file another rank ever writes)."""
        rank = "" if self.world.writer else f"rank {self.world.rank}: "
        if self.world.size > 1 and distributed.peer_stopped(exc):
            return StageFailed(
                f"{where}: {rank}another process of the distributed run stopped ({first_line(exc, 120)}); "
                "the unfinished stage was discarded and a rerun resumes from the last finished stage"
            )
        name = ERROR_LOG if self.world.writer else f"error.rank{self.world.rank}.log"
        log = self.run_dir / name
        trace = "".join(traceback.format_exception(exc))
        write_text(log, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {where}\n{trace}")
        cause = first_line(exc, 300)
        found, users_code = culprit(exc)
        message = f"{where}: {rank}{type(exc).__name__}: {cause} ({found}traceback in {log})"
        return UserError(message) if users_code else StageFailed(message)

    def _stage_key(self, planned: PlannedStage, upstream: list[str], data: DataSplits) -> str:
        entry, plan = self.config.stages[planned.index], planned.plan
        for path in plan.input_files:  # checked at plan time; a file gone since gets a clear message, not a trace
            if not path.is_file():
                raise UserError(f"{planned.where}: file not found: {path}")
        key_parts = plan.key_parts
        if planned.stage.distributed and self.world.size > 1:  # its numbers depend on the number of processes
            key_parts = {**key_parts, "world_size": self.world.size}
        return keys.stage_key(
            stage=entry.type,
            settings=entry.settings_with_guard(),
            key_parts=key_parts,
            input_files=keys.file_hashes(plan.input_files),
            upstream=upstream,
            data_fingerprint=data.fingerprint,
            seed=self.config.seed,
            index=planned.index,
            versions=self.versions,
            code=self.code_versions[planned.index],
        )

    def _reuse(self, final: Path) -> _Made:
        self.console.print(f"[dim]↺ {final.name}: unchanged, reusing[/dim]")
        manifest = read_json(final / MANIFEST_FILE)
        return _Made(Artifact.load(final), manifest["output_hash"], read_json(final / METRICS_FILE))

    # ------------------------------------------------------------------ making a stage's model

    def _make(
        self,
        planned: PlannedStage,
        key: str,
        upstream: list[str],
        data: DataSplits,
        models: ModelLoader,
        artifact: Artifact,
        earlier: dict[int, Artifact],
        measured: dict[int, dict[str, Any]],
    ) -> _Made:
        index, stage, where = planned.index, planned.stage, planned.where
        if artifact.kind not in stage.accepts:  # a guard kept an earlier model of another kind
            raise StageFailed(
                f"{where}: cannot take the '{artifact.kind}' model passed on by an accuracy guard; it accepts: "
                f"{', '.join(stage.accepts)}"
            )
        final = self.stage_dir(index)
        tmp = partial_dir(final)
        try:  # from before the folder exists: a signal landing just after it is made still removes it
            fresh_temp_dir(final)
            self.console.print(f"[bold cyan]▶ {final.name}[/bold cyan]")
            started = time.perf_counter()
            ctx = StageContext(self.config, index, where, data, models, artifact, tmp, dict(earlier))
            result, metrics, guard_record = self._guarded_result(planned, ctx, measured)
            record = {
                "duration_s": round(time.perf_counter() - started, 2),
                "metrics": metrics,
                "details": result.details,
                "notes": result.notes,
                **({"guard": guard_record} if guard_record else {}),
            }
            write_json(tmp / METRICS_FILE, record)
            output_hash = self._write_manifest(tmp, key, planned, upstream, data)
            commit_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written survives a failure or a kill
            raise
        m = metrics
        self.console.print(
            f"[green]✓ {final.name}[/green] {record['duration_s']:.1f}s · accuracy {m['accuracy'] * 100:.2f}% · "
            f"{m['size_bytes'] / 1024:.1f} KB"
        )
        return _Made(Artifact.load(final), output_hash, record)

    def _guarded_result(
        self, planned: PlannedStage, ctx: StageContext, measured: dict[int, dict[str, Any]]
    ) -> tuple[StageResult, dict[str, Any], dict[str, Any] | None]:
        """Run the stage, evaluate its model, and let its accuracy guard (if any) act on the result."""
        tmp, where = ctx.out_dir, planned.where

        def attempt(run: Callable[[StageContext], StageResult]) -> tuple[StageResult, dict[str, Any]]:
            for leftover in tmp.iterdir():  # a retry starts from an empty folder
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            owner = getattr(run, "__self__", None)  # a guard's fallback is another instance of the stage
            if isinstance(owner, Stage) and owner.distributed:
                self._order_stage(planned.index, owner, ctx)
            result = run(ctx)
            produced = result.artifact
            if produced.directory is not None and produced.directory.resolve() != tmp.resolve():
                raise RuntimeError(f"{where}: stage wrote its artifact outside its folder")
            metrics = evaluate_artifact(produced, ctx.data, ctx.models, tmp, self.config.measure.eval_batch_size)
            if produced.directory is not None:  # what the model takes and gives, beside the model
                produced.meta["input_spec"] = [f.to_json() for f in ctx.data.input_spec]
                produced.meta["output_kind"] = metrics["output_kind"]
                produced.save()
            return result, metrics

        result, metrics = attempt(planned.stage.execute)
        guard = self.config.stages[planned.index].guard
        if guard is None:
            return result, metrics, None
        reference = reference_accuracy(guard, self.config, planned.index, measured)
        return run_guarded(guard, planned.stage, ctx, (result, metrics), attempt, reference)

    def _order_stage(self, index: int, stage: Stage, ctx: StageContext) -> None:
        """Rank 0: have the other ranks run ``stage`` with it (they get the input and the earlier
        PyTorch models as files: a teacher may be any of them)."""
        if self.world.size == 1:
            return
        earlier = {i: distributed.PackedArtifact.pack(a) for i, a in ctx.earlier.items() if a.kind == TORCH}
        packed = distributed.PackedArtifact.pack(ctx.input)
        self._tell(distributed.Order("stage", index=index, stage=stage, input=packed, earlier=earlier))

    def _write_manifest(self, tmp: Path, key: str, planned: PlannedStage, upstream: list[str], data: DataSplits) -> str:
        files = hash_tree(tmp)
        output_hash = combined_hash({k: v for k, v in files.items() if k != METRICS_FILE})
        entry = self.config.stages[planned.index]
        write_json(
            tmp / MANIFEST_FILE,
            {
                "cache_key": key,
                "stage": entry.type,
                "index": planned.index,
                "settings_hash": canonical_hash(entry.settings_with_guard()),
                "upstream": upstream,
                "data_fingerprint": data.fingerprint,
                "input_spec": [f.to_json() for f in data.input_spec],
                "versions": self.versions,
                "code_version": self.code_versions[planned.index],
                "files": files,
                "output_hash": output_hash,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        return output_hash

    # ------------------------------------------------------------------ measuring (never retrains)

    def _load_measurements(self) -> dict[str, Any]:
        path = self.run_dir / MEASUREMENTS_FILE
        try:
            cache = read_json(path)
        except (OSError, ValueError):
            return {}
        return cache if isinstance(cache, dict) else {}

    def _save_measurements(self, cache: dict[str, Any]) -> None:
        current = {self.stage_dir(p.index).name for p in self.planned}
        write_json(self.run_dir / MEASUREMENTS_FILE, {k: v for k, v in cache.items() if k in current})

    def _partners(self, timed: list[_Timed]) -> dict[str, _Timed]:
        """Who the next stage is timed beside: the previous measured stage, and the reference stage
        (the baseline; the first measured stage in a run without one). Stages before the reference
        have no reference partner; the reference has none but its previous stage."""
        partners = {"previous": timed[-1]} if timed else {}
        reference = next((t for t in timed if t.reference), None)
        if reference is None and not self.has_reference and timed:
            reference = timed[0]
        if reference is not None:
            partners["reference"] = reference
        return partners

    def _measure(
        self,
        final: Path,
        evaluation: dict[str, Any],
        data: DataSplits,
        cache: dict[str, Any],
        partners: dict[str, _Timed],
    ) -> tuple[dict[str, Any], str]:
        """Latency of the stage's deployable file timed side by side with its partners' files, from the
        measurement cache when its key (every timed file's sha256, ``measure:``, host, code) matches."""
        config = self.config
        shas = {"stage": evaluation["model_sha256"], **{role: t.sha256 for role, t in partners.items()}}
        key = keys.measurement_key(shas, config.measure, config.host, keys.measurement_code_version())
        cached = cache.get(final.name)
        if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("beside"), dict):
            entry, how = cached, "cached"
        else:
            others = list(dict.fromkeys(partners.values()))  # previous and reference may be one stage
            fields = measure_side_by_side(
                [final / evaluation["deployable"], *(t.path for t in others)], config.host, config.measure, data
            )
            entry = {
                "key": key,
                "latency": fields[0],  # the stage's own model goes first (see measure_side_by_side)
                "beside": {role: fields[1 + others.index(t)]["latency_samples_ms"] for role, t in partners.items()},
            }
            cache[final.name] = entry
            self._save_measurements(cache)
            how = "fresh"
        labels = {role: t.label for role, t in partners.items()}
        own = entry["latency"]["latency_samples_ms"]
        latency = {**entry["latency"], **side_by_side_fields(own, entry["beside"], labels)}
        self.console.print(f"[dim]  {final.name}: {latency_line(latency)}[/dim]")
        return latency, how

    def _check_latency(self, record: StageRecord, previous: _Timed | None, report: RunReport) -> None:
        """The latency guard: a stage whose model is slower than its input's beyond the noise is named
        (``on_slower: warn``) or stops the run there (``fail``; everything made so far is kept). A stage
        that passes its input on unchanged (same file) is never judged: the two timings are one model's."""
        s = record.metrics.speedup_vs_previous if record.metrics else None
        if s is None or not s.slower or previous is None or previous.sha256 == record.metrics.model_sha256:
            return
        interval = f" [{s.ci_low:.2f}–{s.ci_high:.2f}]" if s.ci_low is not None and s.ci_high is not None else ""
        summary = (
            f"latency guard: {record.label}'s model is slower than {s.against}'s, its input: {s.ratio:.2f}x{interval} "
            f"(timed side by side; the whole {s.confidence:.0%} interval is below {1 - s.min_effect:.2f})"
        )
        if self.config.latency_guard.on_slower == "fail":
            report.stages.append(record)
            self._publish(report)
            raise StageFailed(f"{summary}; every stage's artifact is kept (latency_guard.on_slower: fail)")
        self.console.print(f"[yellow]⚠ {summary}[/yellow]")

    # ------------------------------------------------------------------ reporting

    def _publish(self, report: RunReport) -> None:
        write_json(self.run_dir / REPORT_JSON, report.to_json())
        for listener in self.listeners:
            listener(self.run_dir, report)

    def _check_run_guard(self, guard: RunGuard, report: RunReport) -> None:
        outcome = run_guard_check(guard, report)
        report.guard = outcome
        self._publish(report)
        budget = f"max_accuracy_drop {guard.max_accuracy_drop * 100:.2f} pt"
        if outcome.ok:
            self.console.print(f"[green]✓ run guard: final model within {budget} of the baseline[/green]")
            return
        summary = (
            f"run guard: the final model ({outcome.final_stage}) is {outcome.drop * 100:.2f} pt below the "
            f"baseline on validation accuracy ({budget})"
        )
        if guard.on_breach == "fail":
            raise StageFailed(f"{summary}; every stage's artifact is kept")
        self.console.print(f"[yellow]⚠ {summary}; deliverable: {outcome.deliverable}[/yellow]")

    def _new_report(self, data: DataSplits) -> RunReport:
        return RunReport(
            run=self.config.name,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            config=self.config.to_plain(),
            config_hash=canonical_hash(self.config.to_plain()),
            versions=self.versions,
            device=device_facts(),
            device_profile=self.config.host.model_dump(mode="json"),
            data_fingerprint=data.fingerprint,
            test_samples=len(data.test),
        )


def side_by_side_fields(samples: list[float], beside: dict[str, list[float]], labels: dict[str, str]) -> dict[str, Any]:
    """A stage's p50 interval and its speed-ups against the models timed beside it, from per-run
    samples taken in the same rounds: ``beside`` and ``labels`` map a role (``previous``,
    ``reference``) to that model's samples and stage label. Computed from the cached samples on
    every run (editing this re-measures nothing)."""
    own = np.asarray(samples, dtype=np.float64)
    fields: dict[str, Any] = {"latency_confidence": DEFAULT_CONFIDENCE}
    if own.size >= MIN_SAMPLES:
        fields["latency_p50_ci_ms"] = median_interval(own, DEFAULT_CONFIDENCE)
    for role, label in labels.items():
        other = np.asarray(beside[role], dtype=np.float64)
        ratio, ci, verdict = ratio_of_medians(other, own, DEFAULT_CONFIDENCE, DEFAULT_MIN_EFFECT)
        fields[PARTNERS[role]] = {
            "against": label,
            "ratio": ratio,
            "ci_low": ci[0] if ci else None,
            "ci_high": ci[1] if ci else None,
            "confidence": DEFAULT_CONFIDENCE,
            "min_effect": DEFAULT_MIN_EFFECT,
            "verdict": verdict,
            "against_p50_ms": float(np.median(other)),
        }
    return fields


def latency_line(latency: dict[str, Any]) -> str:
    """'p50 0.0213 ms [0.0211–0.0215] · 0.84x [0.80–0.88] vs 04-export (slower (regression)) · …' for the log."""
    p50, ci = latency["latency_ms"]["p50"], latency.get("latency_p50_ci_ms")
    parts = [f"p50 {p50:.4g} ms" + (f" [{ci[0]:.4g}–{ci[1]:.4g}]" if ci else "")]
    shown = set()
    for field in PARTNERS.values():
        s = latency.get(field)
        if s and s["against"] not in shown:  # the previous stage may be the baseline
            shown.add(s["against"])
            interval = f" [{s['ci_low']:.2f}–{s['ci_high']:.2f}]" if s["ci_low"] is not None else ""
            parts.append(f"{s['ratio']:.2f}x{interval} vs {s['against']} ({s['verdict']})")
    return " · ".join(parts)
