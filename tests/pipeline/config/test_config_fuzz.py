"""Property-based fuzzing of the config loader (hypothesis).

A config file is user input: whatever it holds, ``load_config``/``parse_config`` must return a
``RunConfig`` or raise ``UserError`` (the CLI prints that as one line, exit code 2). Any other
exception reaches the user as a traceback, a hang stalls a run, and a ``!!python/...`` tag that ran
would be code execution from a config file. Valid configs must hash stably, because the stage cache
keys and the run record are ``canonical_hash`` of ``to_plain()``.

``parse_config`` validates only: it neither loads data nor builds models, so thousands of examples
stay fast. Runs are derandomized (reproducible in CI) and keep no example database.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
import typing
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from edgeslim.api import load_config, parse_config, stage_types
from edgeslim.config.schema import (
    NAME_PATTERN,
    Arm64EmulatedProfile,
    DataSpec,
    HostProfile,
    MeasureSpec,
    ModelSpec,
    RemoteProfile,
    RunConfig,
    canonical_hash,
)
from edgeslim.errors import UserError
from edgeslim.prune.criteria import CRITERIA
from edgeslim.train.optim import OptimizerConfig
from tests.conftest import small_config

BASE: dict[str, Any] = small_config(["baseline", {"prune": {"pruning_ratio": 0.3}}], devices=["host"])
BASE_DIR = Path("/nonexistent-edgeslim-fuzz")  # relative paths resolve against the config's folder
REGISTRY = stage_types()
parse_config(copy.deepcopy(BASE), BASE_DIR)  # the base is valid; also warms imports before any deadline runs

FUZZ = settings(
    deadline=timedelta(seconds=2),  # a slow or hanging example fails instead of stalling the suite
    derandomize=True,
    database=None,
    phases=[phase for phase in Phase if phase is not Phase.explain],  # explain traces every line: slow
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def one_line(exc: UserError) -> str:
    """What the CLI prints after ``edgeslim: error:``."""
    return " ".join(str(exc).split())


def config_or_error(load: Callable[[], RunConfig]) -> RunConfig | str:
    """The config, or the CLI's one-line message of a ``UserError``; any other exception fails the test."""
    try:
        return load()
    except UserError as exc:
        message = one_line(exc)
        assert message, f"UserError with an empty message: {exc!r}"
        return message
    except Exception as exc:  # the failure itself, raised below: outside this block, a recursion leaves no context
        escaped = exc
    detail = f"{type(escaped).__name__} escaped instead of a UserError: {escaped}"
    if isinstance(escaped, RecursionError):  # its ~1000 frames vary run to run (hypothesis: "flaky"); say only what
        raise AssertionError(detail)
    raise AssertionError(detail) from escaped


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file rewritten by every example (a function-scoped tmp_path would trip hypothesis' health check)."""
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


# ---------------------------------------------------------------- arbitrary files

FRAGMENTS = [
    "stages:",
    "- prune:",
    "- baseline",
    "  - quantize: {method: auto}",
    "name: t",
    "seed: ",
    "model:",
    "  name: tiny_cnn",
    "data: {name: digits, max_samples: 600}",
    "devices: [host]",
    "{",
    "}",
    "[",
    "]",
    ":",
    ": ",
    ",",
    "-",
    "\t",
    "  ",
    "\n",
    "\r\n",
    "&a ",
    "*a",
    "&a [*a]",
    "<<: *a",
    "? ",
    "!!python/object:os.system",
    "!!python/object/apply:os.system",
    "!!binary",
    "!!set",
    "!!float",
    "!!str",
    "---",
    "...",
    "%YAML 1.1\n",
    "%TAG ! tag:yaml.org,2002:\n",
    "'",
    '"',
    '"\\x00"',
    '"\\uD800"',
    "#",
    "|",
    ">-",
    "~",
    "null",
    "-1",
    "1e999",
    ".nan",
    "-.inf",
    "0x1F",
    "0o17",
    "1_000",
    "2001-12-14",
    "yes",
    "\x00",
    "\ufeff",
    "\x85",
    "\u2028",
]
yamlish = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=6), max_size=40).map("".join)
valid_lines = yaml.safe_dump(BASE, sort_keys=False).splitlines()
mutated_valid = st.builds(
    lambda i, junk: "\n".join([*valid_lines[:i], junk, *valid_lines[i + 1 :]]),
    st.integers(0, len(valid_lines) - 1),
    yamlish,
)


@settings(FUZZ, max_examples=1500)
@given(text=st.text() | yamlish | mutated_valid)
def test_any_text_gives_a_config_or_a_user_error(config_file: Path, text: str) -> None:
    config_file.write_text(text, encoding="utf-8")
    config_or_error(lambda: load_config(config_file))


# Deep and long inputs are a fixed grid, not hypothesis ranges: how deep Python can recurse depends on the caller's
# stack, so a failure near the limit does not replay while shrinking (reported as flaky, after minutes of retries).
NESTING = {"flow-list": ("[", "]"), "flow-map": ("{a: ", "}"), "stages": ("stages: [", "]"), "block-list": ("- ", "")}
DEEP = {f"{kind}-{depth}": o * depth + "1" + c * depth for kind, (o, c) in NESTING.items() for depth in (10, 1_000)}
DEEP |= {f"indented-{depth}": "".join(" " * i + "a:\n" for i in range(depth)) for depth in (10, 1_000)}
LONG = {
    f"{key}-{value.strip()}-{n}": f"name: t\nstages: [baseline]\n{key}: {value * n}\n"
    for key in ("seed", "x")
    for value in ("a", "9", "- ", "&a ", "'")
    for n in (10, 5_000, 200_000)
}


@pytest.mark.parametrize("text", [*DEEP.values(), *LONG.values()], ids=[*DEEP, *LONG])
def test_deep_and_long_inputs_give_a_config_or_a_user_error(config_file: Path, text: str) -> None:
    config_file.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    config_or_error(lambda: load_config(config_file))
    assert time.perf_counter() - start < 2, "the loader must fail fast, not crawl through a huge input"


@settings(FUZZ, max_examples=100)
@given(content=st.binary(max_size=200))
def test_any_bytes_give_a_config_or_a_user_error(config_file: Path, content: bytes) -> None:
    config_file.write_bytes(content)
    config_or_error(lambda: load_config(config_file))


PYTHON_TAGS = [
    '!!python/object/apply:os.system ["touch {sentinel}"]',
    '!!python/object/apply:subprocess.call [["touch", "{sentinel}"]]',
    '!!python/object/new:subprocess.Popen [["touch", "{sentinel}"]]',
    "!!python/object/apply:builtins.exec [\"open('{sentinel}', 'w').close()\"]",
    '!<tag:yaml.org,2002:python/object/apply:os.system> ["touch {sentinel}"]',
    "!!python/name:os.system",
    "!!python/module:os",
]
TAG_PLACES = [
    "{payload}",
    "name: t\nseed: {payload}\nstages: [baseline]",
    "name: t\nstages:\n  - prune: {payload}",
    "name: t\nstages: [baseline]\nmodel:\n  kwargs:\n    x: {payload}",
    "unused: &x {payload}\nname: t\nstages: [baseline]",
    "name: t\nstages: [baseline]\n? {payload}\n: 1",
    "name: t\nstages: [baseline, {payload} ]",
]


@pytest.mark.parametrize(
    ("tag", "place"),
    [
        pytest.param(tag, place, id=f"tag{i}-place{j}")
        for (i, tag), (j, place) in itertools.product(enumerate(PYTHON_TAGS), enumerate(TAG_PLACES))
    ],
)
def test_python_tags_never_execute(config_file: Path, tag: str, place: str) -> None:
    """Every ``!!python/...`` tag is refused as malformed YAML, and the command in it never runs."""
    sentinel = config_file.parent / "SENTINEL"
    text = place.format(payload=tag.format(sentinel=sentinel))
    tags = {node.tag for node in _nodes(yaml.compose(text, Loader=yaml.SafeLoader))}
    assert any("python/" in t for t in tags), f"payload not parsed as a python tag: {text!r}"  # reaches the loader
    config_file.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(config_file)
    assert not sentinel.exists(), f"the config ran code: {text!r}"


def _nodes(node: yaml.Node | None) -> Iterator[yaml.Node]:
    if node is None:
        return
    yield node
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            yield from _nodes(child)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _nodes(key)
            yield from _nodes(value)


# ---------------------------------------------------------------- arbitrary values in a valid config

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.builds(str.__add__, st.text(max_size=6), st.sampled_from([".onnx", ".pt", ".safetensors", ".json"]))
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
SECTIONS = {"model": ModelSpec, "data": DataSpec, "measure": MeasureSpec}
SECTION_FIELDS = [(section, field) for section, model in SECTIONS.items() for field in model.model_fields]
STAGE_FIELDS = {kind: [*stage.Config.model_fields, "guard"] for kind, stage in REGISTRY.items()}
DEVICE_FIELDS = {
    profile.model_fields["kind"].default: [f for f in profile.model_fields if f != "kind"]
    for profile in (HostProfile, Arm64EmulatedProfile, RemoteProfile)
}
Mutation = tuple[dict[str, Any], str]  # (raw config, the key path its error must start with)


def _mutant(path: tuple[Any, ...], value: Any, where: str) -> Mutation:
    raw = copy.deepcopy(BASE)
    target = raw
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return raw, where


def _some_fields(fields: dict[str, list[str]]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(kind, {a few of its fields: arbitrary values}): several substitutions per example."""
    return st.sampled_from(sorted(fields)).flatmap(
        lambda kind: st.tuples(
            st.just(kind), st.dictionaries(st.sampled_from(fields[kind]), json_values, min_size=1, max_size=4)
        )
    )


mutations = st.one_of(
    st.builds(
        lambda key, value: _mutant((key,), value, key), st.sampled_from(list(RunConfig.model_fields)), json_values
    ),
    st.builds(lambda path, value: _mutant(path, value, ".".join(path)), st.sampled_from(SECTION_FIELDS), json_values),
    st.builds(lambda i, value: _mutant(("stages", i), value, f"stages[{i}]"), st.integers(0, 1), json_values),
    st.builds(
        lambda kind, value: _mutant(("stages", 1), {kind: value}, f"stages[1].{kind}"),
        st.sampled_from(list(REGISTRY)),
        json_values,
    ),
    st.builds(lambda ks: _mutant(("stages", 1), {ks[0]: ks[1]}, f"stages[1].{ks[0]}"), _some_fields(STAGE_FIELDS)),
    st.builds(lambda ks: _mutant(("devices", 0), {ks[0]: ks[1]}, "devices"), _some_fields(DEVICE_FIELDS)),
)


@settings(FUZZ, max_examples=1000)
@given(mutation=mutations)
def test_any_value_anywhere_gives_a_config_or_an_error_naming_its_key(mutation: Mutation) -> None:
    raw, where = mutation
    result = config_or_error(lambda: parse_config(raw, BASE_DIR))
    if isinstance(result, str):
        assert re.match(re.escape(where) + r"[:.\[]", result), f"error does not start with {where!r}: {result!r}"


KNOWN_KEYS: dict[tuple[Any, ...], set[str]] = {
    (): set(RunConfig.model_fields),
    ("model",): set(ModelSpec.model_fields),
    ("data",): set(DataSpec.model_fields),
    ("measure",): set(MeasureSpec.model_fields),
    ("stages", 1, "prune"): {*REGISTRY["prune"].Config.model_fields, "guard"},
}


@settings(FUZZ, max_examples=200)
@given(place=st.sampled_from(list(KNOWN_KEYS)), key=st.text(max_size=12), value=json_values)
def test_unknown_keys_are_named(place: tuple[Any, ...], key: str, value: Any) -> None:
    """Any other key is an error that names the key and lists the allowed ones."""
    assume(key not in KNOWN_KEYS[place])
    assume("\0" not in key)  # refused earlier, as "key '...' contains a NUL byte"
    raw = copy.deepcopy(BASE)
    target = raw
    for part in place:
        target = target[part]
    target[key] = value
    message = config_or_error(lambda: parse_config(raw, BASE_DIR))
    assert isinstance(message, str), f"unknown key {key!r} accepted at {place}"
    assert "unknown key; allowed keys:" in message
    assert " ".join(key.split()) in message


# ---------------------------------------------------------------- valid configs hash stably

unit = st.floats(0, 1, exclude_min=True, exclude_max=True)
guards = st.none() | st.fixed_dictionaries(
    {"max_accuracy_drop": st.floats(0, 1), "on_breach": st.sampled_from(["fail", "keep_previous", "fallback"])}
)
training = {
    "epochs": st.integers(1, 5),
    "batch_size": st.integers(1, 512),
    "optimizer": st.fixed_dictionaries(
        {"name": st.sampled_from(typing.get_args(OptimizerConfig.model_fields["name"].annotation)), "lr": unit}
    ),
}
stage_settings = {
    "baseline": st.just({}),
    "train": st.fixed_dictionaries({}, optional=training),
    "prune": st.fixed_dictionaries(
        {},
        optional={
            "importance": st.sampled_from(sorted(CRITERIA)),
            "pruning_ratio": unit,
            "iterative_steps": st.integers(1, 5),
            "global_pruning": st.booleans(),
            "round_to": st.none() | st.integers(1, 16),
        },
    ),
    "finetune": st.fixed_dictionaries({}, optional={**training, "qat": st.booleans()}),
    "export": st.fixed_dictionaries({}, optional={"opset": st.integers(17, 23), "target": st.just("onnx")}),
    "quantize": st.fixed_dictionaries(
        {}, optional={"method": st.sampled_from(["static", "dynamic", "int4", "auto"]), "per_channel": st.booleans()}
    ),
    "benchmark": st.fixed_dictionaries({}, optional={"runs": st.integers(5, 1000), "warmup": st.integers(0, 100)}),
}


@st.composite
def stage_entries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(stage_settings)))
    entry = draw(stage_settings[kind])
    guard = draw(guards)
    return {kind: {**entry, "guard": guard} if guard else entry}


valid_configs = st.fixed_dictionaries(
    {
        "name": st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda s: len(s) < 40),
        "seed": st.integers(0, 2**31),
        "model": st.just({"name": "tiny_cnn"}),
        "data": st.fixed_dictionaries(
            {"name": st.just("digits"), "max_samples": st.integers(30, 2000)}, optional={"val_fraction": st.just(0.2)}
        ),
        "stages": st.lists(stage_entries(), min_size=1, max_size=4),
    },
    optional={
        "devices": st.lists(st.sampled_from(["host", "arm64-emulated"]), min_size=1, max_size=2, unique=True),
        "measure": st.fixed_dictionaries({"warmup": st.integers(0, 50), "runs": st.integers(5, 500)}),
        "guard": st.fixed_dictionaries({"max_accuracy_drop": st.floats(0, 1)}),
    },
)


@settings(FUZZ, max_examples=300)
@given(raw=valid_configs)
def test_valid_configs_parse_and_hash_stably(raw: dict[str, Any], config_file: Path) -> None:
    """Same dict -> same hash; ``to_plain`` re-parses (directly and through YAML) to the same hash."""
    config = parse_config(copy.deepcopy(raw))
    plain = config.to_plain()
    digest = canonical_hash(plain)
    assert canonical_hash(parse_config(copy.deepcopy(raw)).to_plain()) == digest
    assert canonical_hash(json.loads(json.dumps(plain))) == digest
    assert parse_config(copy.deepcopy(plain)).to_plain() == plain
    config_file.write_text(yaml.safe_dump(plain, sort_keys=False), encoding="utf-8")
    assert canonical_hash(load_config(config_file).to_plain()) == digest


# ---------------------------------------------------------------- minimal examples of bugs found by the fuzzing

# Each of these once let an exception other than UserError escape (a traceback instead of one line); so did
# deep nesting (RecursionError inside PyYAML) and integers beyond Python's 4300-digit limit, which
# test_deep_and_long_inputs_give_a_config_or_a_user_error covers.
BAD_FILES = {
    "nul-in-onnx-model-path": 'name: t\nstages: [baseline]\nmodel: {name: "a\\0.onnx"}',  # ValueError: null byte
    "nul-in-checkpoint-path": 'name: t\nstages: [baseline]\nmodel: {checkpoint: "a\\0.pt"}',
    "nul-in-remote-report-path": 'name: t\nstages: [baseline]\ndevices: [{remote: {report: "r\\0.json"}}]',
    "unhashable-quantize-scheme": "name: t\nstages: [{quantize: {scheme: []}}]",  # TypeError in _migrate
}


@pytest.mark.parametrize("text", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_found_by_fuzzing_give_a_user_error(config_file: Path, text: str) -> None:
    config_file.write_text(text, encoding="utf-8")
    with pytest.raises(UserError):
        load_config(config_file)


# A run's resolved config (report.json, the report's "Configuration" section) must be usable as a config again;
# quantize once refused its own default ``percentile`` when written back by to_plain().
@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_each_stage_default_config_re_parses(kind: str) -> None:
    plain = parse_config({"name": "t", "stages": [kind]}).to_plain()
    assert parse_config(plain).to_plain() == plain
