"""The search: block: validated like the rest of the config, errors naming the key path."""

from __future__ import annotations

import pytest

from edgeslim.errors import UserError
from edgeslim.study.search import default_params, read_setup
from edgeslim.study.space import apply_params, get_path, parse_search, set_path
from tests.conftest import small_config

STAGES = [
    {"train": {"epochs": 2, "optimizer": {"lr": 0.01}}},
    "baseline",
    {"prune": {"pruning_ratio": 0.5, "importance": "l1"}},
    {"finetune": {"epochs": 1}},
]


def config_with(search: dict) -> dict:
    return {**small_config(STAGES), "search": search}


def test_key_paths_reach_stage_settings_by_type_or_index_and_nested_keys():
    cfg = small_config(STAGES)
    out = apply_params(cfg, {"stages.prune.pruning_ratio": 0.3, "stages.3.optimizer.lr": 0.1, "data.max_samples": 90})
    assert out["stages"][2] == {"prune": {"pruning_ratio": 0.3, "importance": "l1"}}
    assert out["stages"][3] == {"finetune": {"epochs": 1, "optimizer": {"lr": 0.1}}}
    assert out["data"]["max_samples"] == 90
    assert cfg["stages"][2]["prune"]["pruning_ratio"] == 0.5  # the base config is untouched
    assert get_path(out, "stages.finetune.optimizer.lr") == (True, 0.1)
    assert get_path(out, "stages.prune.round_to") == (False, None)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("stages.export.opset", "search.space.stages.export.opset: no export stage in the config (stages are: train"),
        ("stages.9.epochs", "search.space.stages.9.epochs: there are 4 stages"),
        ("stages.prune", "search.space.stages.prune: name a setting of a stage"),
        ("stages.prune.pruning_ratio.x", "search.space.stages.prune.pruning_ratio.x: pruning_ratio is 0.5, not a"),
    ],
)
def test_bad_key_paths_are_named(path, message):
    with pytest.raises(UserError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        set_path(small_config(STAGES), path, 1)


def test_two_stages_of_a_type_need_an_index():
    cfg = small_config([*STAGES, {"finetune": {"epochs": 1}}])
    with pytest.raises(UserError, match=r"has 2 finetune stages; name one by index, e\.g\. stages\.3\.epochs"):
        set_path(cfg, "stages.finetune.epochs", 2)


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"space": {"stages.prune.pruning_ratio": {"low": 0.8, "high": 0.2}}, "trials": 2}, "search.space.stages"),
        ({"space": {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.8}}}, "set a budget"),
        ({"space": {"a": [1]}, "trials": 2, "objectives": {"speed": "max"}}, r"search\.objectives\.speed"),
        ({"space": {"a": [1, 2]}, "trials": 2, "sampler": "cmaes", "objectives": {"accuracy": "max"}}, "continuous"),
        ({"space": {"a": {"low": 1e-3, "high": 1, "log": True}}, "trials": 2, "sampler": "cmaes"}, "one objective"),
        ({"space": {}, "trials": 2}, r"search\.space"),
        ({"space": {"a": [1]}, "trials": 0}, r"search\.trials"),
        ({"space": {"a": [1]}, "trials": 2, "samplr": "tpe"}, r"search\.samplr: unknown key"),
    ],
)
def test_search_block_errors_are_one_line_naming_the_key(search, message):
    with pytest.raises(UserError, match=message) as err:
        parse_search(search)
    assert "\n" not in str(err.value)


def test_values_the_stage_refuses_are_caught_before_any_trial(tmp_path):
    search = {"space": {"stages.prune.pruning_ratio": {"low": 0.2, "high": 1.5}}, "trials": 2}
    with pytest.raises(
        UserError,
        match=r"search\.space: the config with stages\.prune\.pruning_ratio=1\.5 is invalid: "
        r"stages\[2\]\.prune\.pruning_ratio",
    ):
        read_setup(config_with(search))
    search = {"space": {"stages.prune.importance": ["l1", "l7"]}, "trials": 2}
    with pytest.raises(UserError, match=r"importance='l7' is invalid"):
        read_setup(config_with(search))
    with pytest.raises(UserError, match="no search: block"):
        read_setup(small_config(STAGES))


def test_the_configs_own_settings_are_the_default_trial():
    space = {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.8}, "stages.prune.importance": ["l1", "taylor"]}
    setup = read_setup(config_with({"space": space, "trials": 2}))
    assert default_params(setup) == {"stages.prune.pruning_ratio": 0.5, "stages.prune.importance": "l1"}
    # a key the config leaves to its default, or a value outside the space: no default trial
    setup = read_setup(
        config_with({"space": {**space, "stages.finetune.optimizer.lr": {"low": 0.1, "high": 1}}, "trials": 2})
    )
    assert default_params(setup) is None
    setup = read_setup(config_with({"space": {"stages.prune.pruning_ratio": {"low": 0.6, "high": 0.8}}, "trials": 2}))
    assert default_params(setup) is None


def test_integer_ranges_and_choices():
    cfg = parse_search({"space": {"stages.finetune.epochs": {"low": 1, "high": 3}, "x": [True, False]}, "trials": 1})
    assert cfg.sampler_name == "tpe" and cfg.directions == ["maximize", "minimize"]
    from edgeslim.study.space import corner_params

    corners = corner_params(cfg)
    assert corners == [{"stages.finetune.epochs": 1, "x": True}, {"stages.finetune.epochs": 3, "x": False}]
    assert isinstance(corners[0]["stages.finetune.epochs"], int)


def test_each_sampler_is_optunas_own():
    import optuna

    from edgeslim.study.search import make_sampler

    space = {"space": {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.8}}, "trials": 2}
    kinds = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    for name, cls in kinds.items():
        cfg = parse_search({**space, "sampler": name, "objectives": {"accuracy": "max"}})
        assert isinstance(make_sampler(cfg, 0), cls)
    assert parse_search(space).sampler_name == "tpe"  # two objectives by default: multi-objective TPE
    assert parse_search({**space, "objectives": {"size_bytes": "min"}}).sampler_name == "tpe"


def test_nsga2_children_get_new_numbers_with_sbx_and_only_parents_numbers_with_uniform_crossover():
    """Deb's operators (the default) explore a range between the first generation's values; Optuna's
    uniform crossover copies each number from a parent, so without mutation no new value appears."""
    import optuna

    from edgeslim.study.search import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distinct = {}
    for crossover in ("sbx", "uniform"):
        cfg = parse_search(
            {
                "space": {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.8}, "stages.prune.round_to": [1, 8]},
                "trials": 12,
                "sampler": "nsga2",
                "population_size": 4,
                "crossover": crossover,
                "mutation": "polynomial",
            }
        )
        sampler = make_sampler(cfg, 0)
        sampler._child_generation_strategy._mutation_prob = 0.0  # crossover alone
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("r", 0.2, 0.8), t.suggest_categorical("k", [1, 8])), n_trials=12)
        first = {t.params["r"] for t in study.trials[:4]}
        distinct[crossover] = {t.params["r"] for t in study.trials[4:]} - first
    assert distinct["sbx"] and not distinct["uniform"]
    with pytest.raises(UserError, match="crossover"):
        parse_search({"space": {"stages.prune.importance": ["l1", "l2"]}, "trials": 2, "crossover": "x"})


def test_nsga2_draws_a_child_again_while_it_nearly_duplicates_a_trial_already_in_the_study():
    """Optuna's SBX and polynomial mutation put many children within a hair of a parent (a trial that
    prunes to the same channel counts); ``duplicate_tolerance`` draws those again."""
    import optuna

    from edgeslim.study.search import make_sampler, near

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.8}, "stages.prune.round_to": [1, 8]}
    distributions = {
        "r": optuna.distributions.FloatDistribution(0.2, 0.8),
        "k": optuna.distributions.CategoricalDistribution([1, 8]),
    }
    assert near({"r": 0.5, "k": 1}, {"r": 0.505, "k": 1}, distributions, 0.02)  # 0.8% of the range
    assert not near({"r": 0.5, "k": 1}, {"r": 0.52, "k": 1}, distributions, 0.02)
    assert not near({"r": 0.5, "k": 1}, {"r": 0.5, "k": 8}, distributions, 0.02)
    assert not near({"k": 1}, {"r": 0.5, "k": 1}, distributions, 0.02)  # r still to be drawn
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    assert near({"lr": 1e-3}, {"lr": 1.05e-3}, lr, 0.02) and not near({"lr": 1e-4}, {"lr": 1.5e-4}, lr, 0.02)

    duplicates = {}
    for tolerance in (0.0, 0.02):
        cfg = parse_search(
            {"space": space, "trials": 12, "sampler": "nsga2", "population_size": 4, "duplicate_tolerance": tolerance}
        )
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(cfg, 0))
        study.optimize(lambda t: (t.suggest_float("r", 0.2, 0.8), t.suggest_categorical("k", [1, 8])), n_trials=12)
        trials = study.trials
        duplicates[tolerance] = sum(  # children (after the first generation of 4) near an earlier trial
            any(near(t.params, earlier.params, distributions, 0.02) for earlier in trials[: t.number])
            for t in trials[4:]
        )
    assert duplicates[0.0] > 0 and duplicates[0.02] == 0, duplicates


def test_the_first_points_are_a_latin_hypercube_over_the_space():
    """One point in each equal stratum of every range, each choice equally often, on Optuna's own
    scale and grid (log, integer, step), the same for the same seed."""
    from edgeslim.study.search import initial_params

    space = {
        "r": {"low": 0.2, "high": 0.8},
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "epochs": {"low": 1, "high": 8},
        "width": {"low": 0.25, "high": 1.0, "step": 0.25},
        "k": ["l1", "taylor", "hessian"],
    }
    cfg = parse_search({"space": space, "trials": 12})
    points = initial_params(cfg, 6)
    reseeded = parse_search({"space": space, "trials": 12, "seed": 1})
    assert points == initial_params(cfg, 6) and points != initial_params(reseeded, 6)
    assert sorted(int((p["r"] - 0.2) / 0.6 * 6) for p in points) == list(range(6))
    import math

    assert sorted(int(math.log(p["lr"] / 1e-4) / math.log(100) * 6) for p in points) == list(range(6))
    assert all(isinstance(p["epochs"], int) and 1 <= p["epochs"] <= 8 for p in points)
    assert all(p["width"] in (0.25, 0.5, 0.75, 1.0) for p in points)
    assert sorted(p["k"] for p in points) == sorted(["l1", "taylor", "hessian"] * 2)


def test_nsga2_starts_with_the_default_and_a_latin_hypercube_as_its_first_generation(tmp_path):
    import optuna

    from edgeslim.study.search import ask, open_study, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"stages.prune.pruning_ratio": {"low": 0.2, "high": 0.8}, "stages.prune.importance": ["l1", "taylor"]}

    def first_trials(name: str, worker: bool = False, **search) -> list:
        search = {"sampler": "nsga2", **search}
        setup = read_setup(config_with({"space": space, "trials": 12, "population_size": 4, **search}))
        (tmp_path / name).mkdir()
        study, _, _ = open_study(setup, tmp_path / name, None, worker)
        for _ in range(6):  # as the search loop asks: every trial placed in a generation
            trial = ask(study)
            ratio = suggest(trial, setup.search)["stages.prune.pruning_ratio"]
            study.tell(trial, (ratio, ratio))
        return study.trials

    trials = first_trials("lhs")
    assert trials[0].user_attrs.get("default") and trials[0].params["stages.prune.pruning_ratio"] == 0.5
    assert all(t.user_attrs.get("initial") for t in trials[1:4])  # the rest of the first generation
    ratios = sorted(t.params["stages.prune.pruning_ratio"] for t in trials[1:4])
    assert [int((r - 0.2) / 0.6 * 3) for r in ratios] == [0, 1, 2]
    # the enqueued trials are NSGA-II's generation 0 (its parents), the next ones its children
    generations = [t.system_attrs.get("NSGAIISampler:generation") for t in trials]
    assert generations == [0, 0, 0, 0, 1, 1]
    # drawn by Optuna itself: with initial: random, for a worker, and for the other samplers
    others = [(s, False, {"sampler": s}) for s in ("random", "tpe")]
    for name, worker, search in [("rnd", False, {"initial": "random"}), ("w", True, {}), *others]:
        assert not any(t.user_attrs.get("initial") for t in first_trials(name, worker, **search))
