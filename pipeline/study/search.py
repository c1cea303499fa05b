"""``edgeslim search``: Optuna's samplers over ordinary pipeline runs.

    result = edgeslim.search("configs/search_digits.yaml")           # TPE / NSGA-II / CMA-ES / random
    result.front                                                       # the Pareto front's trials
    edgeslim.export_best("artifacts/search_digits", max_drop_pt=0.5)  # a plain runnable config

The config is a normal run config (its stages are the default the search starts from) plus a
``search:`` block (``study/space.py``). Each trial writes its config to
``<out>/<name>/trials/trial-NNNN.yaml`` and runs it with ``edgeslim.run`` into
``<out>/<name>/trials/trial-NNNN/``: cached and resumable like any run, and sharing its common stage
prefix with earlier trials (``study/trials.py``). The study itself is Optuna RDB storage
(``study/storage.py``): ``study.db`` in the search folder, or ``--storage postgresql://…`` for workers
on several machines. A failed trial is recorded with its one-line error and the search goes on.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, Trial, TrialState
from rich.console import Console

from edgeslim import api
from edgeslim.config.loader import read_yaml
from edgeslim.engine.store import write_text
from edgeslim.errors import StageFailed, UserError, first_line
from edgeslim.study import storage as st
from edgeslim.study.front import SearchSummary, summarize
from edgeslim.study.space import (
    Choices,
    Range,
    SearchConfig,
    apply_params,
    corner_params,
    get_path,
    is_int,
    parse_search,
)
from edgeslim.study.trials import (
    TRIALS_DIR,
    PruneTrial,
    median_rule,
    outcome,
    reuse_shared_stages,
    trial_name,
    write_trial_config,
)
from edgeslim.train.loop import watch_epochs

CURVE_ATTR = "curve"  # the watched stage's validation accuracy per epoch
CONSTRAINTS_ATTR = "constraints"
DEFAULT_ATTR = "default"  # the trial that runs the config's own settings
INITIAL_ATTR = "initial"  # a trial of the space-filling first generation (search.initial: lhs)
MAX_REPEATS = 20  # consecutive trials repeating settings already run: the space is exhausted, the search stops


@dataclass(frozen=True)
class SearchSetup:
    """A search config read and checked: the base run config (raw), the search block, where it runs."""

    base: dict[str, Any]
    search: SearchConfig
    base_dir: Path
    name: str


def read_setup(config: str | Path | Mapping[str, Any]) -> SearchSetup:
    """Read a config with a ``search:`` block and check it: the base config, the block, and every
    bound and choice of the space written into the base config (refused here, before any trial)."""
    if isinstance(config, Mapping):
        raw, base_dir, origin = copy.deepcopy(dict(config)), Path.cwd(), "config"
    else:
        path = Path(config)
        raw, base_dir, origin = read_yaml(path), path.parent.resolve(), str(path)
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: the top level must be a mapping of keys (name, model, data, stages, search)")
    if "search" not in raw:
        raise UserError(f"{origin}: no search: block (space, objectives, budget); see configs/search_digits.yaml")
    cfg = parse_search(raw.pop("search"))
    base = api.parse_config(raw, base_dir)  # the default config itself must be valid
    for params in corner_params(cfg):
        try:
            api.parse_config(apply_params(raw, params), base_dir)
        except UserError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise UserError(f"search.space: the config with {shown} is invalid: {exc}") from None
    return SearchSetup(raw, cfg, base_dir, base.name)


class DistinctNSGAII(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, drawing a child again while it nearly duplicates a trial already in the study
    (``search.duplicate_tolerance``). Duplicate elimination is part of most genetic algorithms (pymoo's
    ``eliminate_duplicates``); here a trial costs minutes, and SBX and polynomial mutation at their usual
    distribution indices put most children within a fraction of a percent of a parent."""

    DRAWS = 10

    @classmethod
    def _get_generation_key(cls) -> str:  # Optuna's own NSGA-II keys: a study stays readable by either sampler
        return optuna.samplers.NSGAIISampler._get_generation_key()

    @classmethod
    def _get_parent_cache_key_prefix(cls) -> str:
        return optuna.samplers.NSGAIISampler._get_parent_cache_key_prefix()

    def __init__(self, *, tolerance: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tolerance = tolerance
        self._fill = optuna.samplers.RandomSampler(seed=kwargs.get("seed"))

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        if self.tolerance <= 0:
            return super().sample_relative(study, trial, search_space)
        others = [t.params for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params]
        for _ in range(self.DRAWS):
            params = super().sample_relative(study, trial, search_space)
            if not params:  # the first generation: drawn independently
                return params
            # a value the child leaves out (a mutated choice) is drawn at random, as NSGA-II would draw it
            # later: drawn here, the child is complete before it is compared
            for name, dist in search_space.items():
                if name not in params:
                    params[name] = self._fill.sample_independent(study, trial, name, dist)
            if not any(near(params, other, search_space, self.tolerance) for other in others):
                break
        return params


def near(a: dict[str, Any], b: dict[str, Any], space: dict[str, Any], tolerance: float) -> bool:
    """Whether settings ``a`` nearly duplicate ``b``: every choice equal and every number within
    ``tolerance`` of its range (on the log scale where the range is log). A value ``a`` leaves to be
    drawn later (absent) is no duplicate."""
    for name, dist in space.items():
        if name not in a or name not in b:
            return False
        x, y = a[name], b[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            if x != y:
                return False
            continue
        low, high = dist.low, dist.high
        if dist.log:
            x, y, low, high = (math.log(v) for v in (x, y, low, high))
        if high > low and abs(x - y) > tolerance * (high - low):
            return False
    return True


def make_sampler(cfg: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Constraints reach the samplers through ``Trial.set_constraint`` (Optuna 5), set before ``tell``."""
    name = cfg.sampler_name
    if name == "nsga2":
        from optuna.samplers import nsgaii

        with warnings.catch_warnings():  # SBX and polynomial mutation are marked experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return DistinctNSGAII(
                tolerance=cfg.duplicate_tolerance,
                population_size=cfg.population_size,
                crossover=nsgaii.SBXCrossover() if cfg.crossover == "sbx" else nsgaii.UniformCrossover(),
                mutation=nsgaii.PolynomialMutation() if cfg.mutation == "polynomial" else None,
                seed=seed,
            )
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=cfg.startup_trials, warn_independent_sampling=False
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials)


def ask(study: optuna.Study) -> Trial:
    """The next trial, placed in an NSGA-II generation even when its settings were enqueued (the
    default, the Latin hypercube): Optuna assigns a generation only when it samples a trial's settings
    itself, so enqueued trials belonged to no population and were never chosen as parents."""
    trial = study.ask()
    if isinstance(study.sampler, optuna.samplers.NSGAIISampler):
        trial.relative_params  # noqa: B018 - sampling the relative params records the trial's generation
    return trial


def suggest(trial: Trial, cfg: SearchConfig) -> dict[str, Any]:
    """The trial's value for every key path of the space (Optuna samples it, or returns an enqueued one)."""
    params = {}
    for path, spec in cfg.space.items():
        if isinstance(spec, Choices):
            params[path] = trial.suggest_categorical(path, spec.choices)
        elif is_int(spec):
            step = int(spec.step or 1)
            params[path] = trial.suggest_int(path, int(spec.low), int(spec.high), step=step, log=spec.log)
        else:
            params[path] = trial.suggest_float(path, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


def open_study(
    setup: SearchSetup, search_dir: Path, storage: str | None, worker: bool
) -> tuple[optuna.Study, str, optuna.storages.RDBStorage]:
    url = st.storage_url(search_dir, storage)
    rdb = st.open_storage(url)
    cfg = setup.search
    # workers share the seed's study but not its random stream: each would otherwise propose the same settings
    seed = cfg.seed + (zlib.crc32(st.worker_id().encode()) % 100_000 if worker else 0)
    objectives = list(cfg.objectives)
    try:
        study = optuna.create_study(
            storage=rdb,
            study_name=setup.name,
            directions=cfg.directions,
            sampler=make_sampler(cfg, seed),
            load_if_exists=True,
        )
    except ValueError as exc:
        raise UserError(f"search: cannot open study '{setup.name}': {exc}") from None
    done = len(study.get_trials(deepcopy=False))
    if done:  # a resumed study: a sampler restarted from the same seed would replay the settings already tried
        study.sampler = make_sampler(cfg, zlib.crc32(f"{seed}:{done}".encode()) % 2**31)
    recorded = study.user_attrs.get("objectives")
    if recorded is None:
        study.set_user_attr("objectives", cfg.objectives)
        study.set_user_attr("space", {k: _plain(v) for k, v in cfg.space.items()})
        if not worker:
            enqueue_start(study, cfg, default_params(setup))
    elif list(recorded) != objectives or [recorded[k] for k in objectives] != list(cfg.objectives.values()):
        raise UserError(
            f"search: the study '{setup.name}' in {st._shown(url)} was made for objectives {recorded}, this config "
            f"asks for {cfg.objectives}; rename the config's name or remove the study"
        )
    return study, url, rdb


def default_params(setup: SearchSetup) -> dict[str, Any] | None:
    """The base config's own values at the space's key paths, when every one is set and inside the
    space (else None: there is no default trial)."""
    params = {}
    for path, spec in setup.search.space.items():
        found, value = get_path(setup.base, path)
        if not found:
            return None
        if isinstance(spec, Choices):
            if value not in spec.choices:
                return None
        elif isinstance(value, bool) or not isinstance(value, int | float) or not spec.low <= value <= spec.high:
            return None
        params[path] = value
    return params


def enqueue_start(study: optuna.Study, cfg: SearchConfig, default: dict[str, Any] | None) -> None:
    """A new study's first trials: the config's own settings (trial 0: what the search must beat), then
    the Latin hypercube filling the rest of the first generation (``search.initial``)."""
    if default is not None:
        study.enqueue_trial(default, user_attrs={DEFAULT_ATTR: True})
    for params in initial_params(cfg, initial_count(cfg, default is not None)):
        study.enqueue_trial(params, user_attrs={INITIAL_ATTR: True})


def initial_count(cfg: SearchConfig, has_default: bool) -> int:
    """How many space-filling points start the study: the rest of NSGA-II's first generation after the
    default; none with ``initial: random`` or another sampler (TPE's startup did no better with them)."""
    if cfg.initial != "lhs" or cfg.sampler_name != "nsga2":
        return 0
    count = cfg.population_size - int(has_default)
    if cfg.trials is not None:
        count = min(count, cfg.trials - int(has_default))
    return max(count, 0)


def initial_params(cfg: SearchConfig, count: int) -> list[dict[str, Any]]:
    """``count`` points of a Latin hypercube over the space, seeded by ``search.seed``. Optuna draws a first generation
    independently at random, so with the few trials a compression search affords it can leave most of
    a range untried (and share its draws with a random search of the same seed); a Latin hypercube
    puts one point in each of ``count`` equal strata of every range and takes each choice equally often."""
    if count <= 0:
        return []
    rng = np.random.default_rng(cfg.seed)
    strata = {path: (rng.permutation(count) + rng.random(count)) / count for path in cfg.space}
    return [{path: _value_at(spec, float(strata[path][i])) for path, spec in cfg.space.items()} for i in range(count)]


def _value_at(spec: Range | Choices, u: float) -> Any:
    """The value of the space's entry at ``u`` in [0, 1): the same scale and grid Optuna samples on."""
    if isinstance(spec, Choices):
        return spec.choices[min(int(u * len(spec.choices)), len(spec.choices) - 1)]
    low, high = spec.low, spec.high
    if spec.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        return min(max(round(value), int(low)), int(high)) if is_int(spec) else min(value, high)
    if spec.step is not None or is_int(spec):
        step = spec.step or 1
        steps = math.floor((high - low) / step + 1e-9)
        value = low + step * min(int(u * (steps + 1)), steps)
        return int(value) if is_int(spec) else round(value, 12)
    return low + u * (high - low)


def _plain(spec: Any) -> Any:
    return spec.model_dump(exclude_none=True) if hasattr(spec, "model_dump") else spec


@dataclass(frozen=True)
class SearchResult:
    """What ``search`` returns: the search folder and the study's summary (every trial, the front)."""

    search_dir: Path
    summary: SearchSummary

    @property
    def trials(self) -> list[Any]:
        return self.summary.trials

    @property
    def front(self) -> list[Any]:
        return [t for t in self.summary.trials if t.number in self.summary.front]


def search(
    config: str | Path | Mapping[str, Any],
    out: str | Path = "artifacts",
    *,
    storage: str | None = None,
    worker: bool = False,
    console: Console | None = None,
) -> SearchResult:
    """Run (or resume, or join as a worker) the search a config's ``search:`` block describes.

    ``storage``: an SQLAlchemy URL for a study shared by several machines (default: ``study.db`` in
    the search folder); ``worker``: this process is one of several adding trials to one study (its
    sampler gets its own random stream). The trial budget is the study's, over every worker."""

    console = console or Console(stderr=True)
    setup = read_setup(config)
    search_dir = Path(out) / setup.name
    try:
        (search_dir / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {search_dir}: {exc.strerror}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _search(setup, search_dir, storage, worker, console)
    except (UserError, StageFailed):
        raise
    except Exception as exc:  # a bug or a library failure outside any trial: one line, the trace in a log
        log = search_dir / "error.log"
        write_text(log, "".join(traceback.format_exception(exc)))
        raise StageFailed(f"search: {type(exc).__name__}: {first_line(exc, 300)} (traceback in {log})") from exc


def _search(setup: SearchSetup, search_dir: Path, storage: str | None, worker: bool, console: Console) -> SearchResult:
    from edgeslim.reports.search_report import write_search_reports

    cfg = setup.search
    study, url, rdb = open_study(setup, search_dir, storage, worker)
    deadline = None if cfg.timeout_s is None else time.monotonic() + cfg.timeout_s
    repeats = 0
    console.print(
        f"[bold]search {setup.name}[/bold]: {cfg.sampler_name}, objectives {cfg.objectives}, study {st._shown(url)}"
    )
    while deadline is None or time.monotonic() < deadline:
        with st.claim_lock(url, setup.name, rdb):
            back = st.give_back_dead_trials(study)
            if back:
                console.print(f"[yellow]trials {back} were interrupted (their process is gone): queued again[/yellow]")
            used = sum(st.counted(t) for t in study.get_trials(deepcopy=False))
            if cfg.trials is not None and used >= cfg.trials:
                break
            trial = ask(study)
            trial.set_user_attr(st.WORKER_ATTR, st.worker_id())
        repeats = repeats + 1 if _run_trial(setup, search_dir, study, trial, console) else 0
        write_search_reports(search_dir, summarize(study, cfg, search_dir))
        if repeats >= MAX_REPEATS:
            console.print(
                f"[yellow]search {setup.name}: the last {repeats} trials repeated settings already run "
                "(the space looks exhausted): stopping[/yellow]"
            )
            break
    summary = summarize(study, cfg, search_dir)
    write_search_reports(search_dir, summary)
    done = sum(t.state == "complete" for t in summary.trials)
    console.print(f"search {setup.name}: {len(summary.trials)} trials ({done} complete), front: {summary.front}")
    return SearchResult(search_dir, summary)


def _run_trial(setup: SearchSetup, search_dir: Path, study: optuna.Study, trial: Trial, console: Console) -> bool:
    """Run one trial's pipeline and tell the study its outcome; True when it only repeated an earlier
    trial's settings (nothing ran)."""
    cfg, number = setup.search, trial.number
    name = trial_name(number)
    params = suggest(trial, cfg)
    shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())
    earlier = repeat_of(study, number, params)
    if earlier is not None:
        tell_repeat(study, trial, earlier)
        console.print(f"[dim]{name}[/dim] {shown} → repeats trial {earlier.number} (its result, not counted)")
        return True
    started = time.perf_counter()
    state, values, note = TrialState.FAIL, None, ""
    try:
        config = apply_params(setup.base, params)
        config["name"] = name
        write_trial_config(search_dir, number, config)
        run_config = api.parse_config(config, setup.base_dir)
        reuse_shared_stages(search_dir, number, config)
        curve: list[float] = []

        def report(epoch: int, accuracy: float) -> None:
            curve.append(accuracy)
            trial.set_user_attr(CURVE_ATTR, curve)

        def curves() -> list[list[float]]:
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            return [t.user_attrs.get(CURVE_ATTR, []) for t in done]

        log = search_dir / TRIALS_DIR / f"{name}.log"
        with open(log, "w") as handle, watch_epochs(median_rule(cfg, curves, report)):
            result = api.run(run_config, search_dir / TRIALS_DIR, console=Console(file=handle, width=140))
        got = outcome(result.report)
        values = [got.objective(k) for k in cfg.objectives]
        for key, value in {
            "run_dir": f"{TRIALS_DIR}/{name}",
            "stage": got.stage,
            "accuracy": got.accuracy,
            "test_accuracy": got.test_accuracy,
            "latency_ms": got.latency_ms,
            "size_bytes": got.size_bytes,
            "reference_accuracy": got.reference_accuracy,
            CONSTRAINTS_ATTR: got.violations(cfg),
        }.items():
            trial.set_user_attr(key, value)
        for key, value in got.violations(cfg).items():
            trial.set_constraint(key, value)
        state = TrialState.COMPLETE
        note = " · ".join(f"{k} {_short(v)}" for k, v in zip(cfg.objectives, values, strict=True))
    except PruneTrial as stop:
        state, note = TrialState.PRUNED, str(stop)
    except (KeyboardInterrupt, SystemExit, GeneratorExit) as exc:
        st.interrupt(study, study._storage.get_trial(trial._trial_id))
        raise exc from None
    except (UserError, StageFailed, ValueError) as exc:
        note = " ".join(str(exc).split())
    except Exception as exc:
        note = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    except BaseException as exc:  # SIGTERM (the CLI's Terminated): given back like Ctrl-C
        st.interrupt(study, study._storage.get_trial(trial._trial_id))
        raise exc from None
    if state != TrialState.COMPLETE:
        trial.set_user_attr("error" if state == TrialState.FAIL else "pruned_at", note)
    trial.set_user_attr("duration_s", round(time.perf_counter() - started, 2))
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    colour = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow"}.get(state, "red")
    console.print(f"[{colour}]{name}[/{colour}] {shown} → {state.name.lower()}: {note}", highlight=False)
    return False


def repeat_of(study: optuna.Study, number: int, params: dict[str, Any]) -> FrozenTrial | None:
    """The complete trial that already ran exactly these settings (an NSGA-II child equal to its
    parent, a draw from a small choice space), if any: running it again would only read the stage
    cache, and counting it would spend a slot of the budget on nothing new."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and t.params == params and t.user_attrs.get(st.REPEAT_ATTR) is None:
            return t
    return None


def tell_repeat(study: optuna.Study, trial: Trial, earlier: FrozenTrial) -> None:
    """Record ``earlier``'s result as the trial's own (the samplers see the point it asked about) and mark
    it a repeat: not counted in the budget, not drawn on the front, its curve not one the pruner compares."""
    own = {st.WORKER_ATTR, DEFAULT_ATTR, INITIAL_ATTR, CURVE_ATTR, "duration_s"}
    for key, value in earlier.user_attrs.items():
        if key not in own:
            trial.set_user_attr(key, value)
    trial.set_user_attr(st.REPEAT_ATTR, earlier.number)
    trial.set_user_attr("duration_s", 0.0)
    for key, value in dict(earlier.user_attrs.get(CONSTRAINTS_ATTR) or {}).items():
        trial.set_constraint(key, value)
    study.tell(trial, list(earlier.values), state=TrialState.COMPLETE)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def export_best(
    search_dir: str | Path, *, max_drop_pt: float | None = None, to: str | Path | None = None
) -> tuple[Path, Any]:
    """Write the chosen trial's config as a plain runnable YAML (no search block). The choice: among
    complete trials that meet the constraints and lose at most ``max_drop_pt`` points of validation
    accuracy against their baseline stage, the fastest (the smallest, without a latency objective;
    the most accurate, with accuracy alone). Returns the file and the trial's summary."""
    from edgeslim.study.front import choose_best, read_summary
    from edgeslim.study.trials import trial_config_path

    search_dir = Path(search_dir)
    summary = read_summary(search_dir)
    best = choose_best(summary, max_drop_pt)
    if best is None:
        limit = "" if max_drop_pt is None else f" within {max_drop_pt} pt of their baseline"
        raise UserError(f"{search_dir}: no complete trial meets the constraints{limit}")
    config = yaml.safe_load(trial_config_path(search_dir, best.number).read_text())
    config["name"] = f"{summary.name}-best"
    target = Path(to) if to is not None else search_dir / "best.yaml"
    header = (
        f"# edgeslim search {summary.name}: trial {best.number} "
        f"({', '.join(f'{k}={v!r}' for k, v in best.params.items())})\n"
        f"# its result: validation accuracy {best.accuracy:.4f}, test {best.test_accuracy:.4f}, "
        f"p50 {best.latency_ms} ms, {best.size_bytes} bytes\n"
    )
    write_text(target, header + yaml.safe_dump(config, sort_keys=False))
    return target, best
