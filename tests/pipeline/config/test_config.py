from __future__ import annotations

import pytest

from edgeslim.api import load_config, parse_config
from edgeslim.engine.plan import build_plan
from edgeslim.errors import UserError
from tests.conftest import small_config, write_config


def test_shipped_configs_are_valid():
    from pathlib import Path

    import yaml

    from edgeslim.study.search import read_setup

    for path in sorted(Path("configs").glob("*.yaml")):
        config = load_config(path)  # a search: block is edgeslim search's; a run runs the stages as written
        build_plan(config)  # the artifact-kind chain is valid too
        if "search" in yaml.safe_load(path.read_text()):
            read_setup(path)  # the search block and every bound of its space


def test_stage_settings_get_their_own_model_and_defaults():
    config = parse_config(small_config(["baseline", {"prune": {"importance": "taylor"}}, "export"]))
    assert [e.type for e in config.stages] == ["baseline", "prune", "export"]
    prune = config.stages[1].settings
    assert prune.importance == "taylor" and prune.pruning_ratio == 0.5
    assert config.stage_index("prune") == 1 and config.stage_index("2") == 2


@pytest.mark.parametrize(
    ("stages_or_overrides", "message"),
    [
        (
            {"stages": [{"prune": {"pruning_ratio": 1.5}}]},
            r"^stages\[0\]\.prune\.pruning_ratio: Input should be less than 1 \(got 1\.5\)$",
        ),
        (
            {"stages": [{"finetune": {"optimizer": {"lr": -0.1}}}]},
            r"^stages\[0\]\.finetune\.optimizer\.lr: Input should be greater than 0 \(got -0\.1\)$",
        ),
        (
            {"stages": [{"prune": {"importance": "random"}}]},
            r"^stages\[0\]\.prune\.importance: Input should be 'l1', 'l2', 'taylor' or 'hessian' \(got 'random'\)$",
        ),
        (
            {"stages": [{"prune": {"ratio": 0.5}}]},
            r"^stages\[0\]\.prune\.ratio: unknown key; "
            r"allowed keys: importance, pruning_ratio, .*ignore, drop_layers, drop_by, vocabulary$",
        ),
        (
            {"stages": [{"finetune": {"distill": {"temp": 2}}}]},
            r"^stages\[0\]\.finetune\.distill\.temp: unknown key; "
            r"allowed keys: teacher, temperature, alpha, hint, layers$",
        ),
        ({"stages": [{"compress": {}}]}, r"^stages\[0\]: unknown stage 'compress'; allowed: .*prune.*"),
        ({"stages": []}, r"^stages: must be a non-empty list"),
        (
            {"stages": ["baseline"], "modle": {}},
            r"^modle: unknown key; allowed keys: name, seed, model, data,",
        ),
        (
            {"stages": ["baseline"], "data": {"test_fraction": 0.7}},
            r"^data\.test_fraction: Input should be less than 0\.5 \(got 0\.7\)$",
        ),
        ({"stages": ["baseline"], "name": "../escape"}, r"^name: String should match pattern"),
        ({"stages": ["baseline"], "seed": "abc"}, r"^seed: Input should be a valid integer"),
        (
            {"stages": [{"prune": {"target_params": 0.3, "target_macs": 0.3}}]},
            r"^stages\[0\]\.prune: give at most one of target_params, target_macs and target_latency_ms",
        ),
        ({"stages": [{"prune": 0.5}]}, r"^stages\[0\]\.prune: settings must be a mapping \(got 0\.5\)$"),
        (
            {"stages": ["baseline"], "devices": [{"gpu": {}}]},
            r"^devices: unknown device profile 'gpu'; allowed: host, arm64-emulated, remote$",
        ),
        (
            {"stages": ["baseline"], "devices": [{"arm64-emulated": {"core": "cortex-m4"}}]},
            r"^devices\[0\]\.arm64-emulated\.core: Input should be 'cortex-a53', 'cortex-a72' or 'cortex-a76'",
        ),
        (
            {"stages": ["baseline"], "devices": [{"host": {"thread": [2]}}]},
            r"^devices\[0\]\.host\.thread: unknown key; allowed keys: kind, name, threads, batch_sizes,",
        ),
        (
            {"stages": ["baseline"], "devices": [{"host": {"threads": [0]}}]},
            r"^devices\[0\]\.host\.threads: every entry must be >= 1",
        ),
        ({"stages": ["baseline"], "devices": ["host", "host"]}, r"^devices: profile names must be unique.*host"),
        ({"stages": ["baseline"], "devices": [{"remote": {}}]}, r"^devices\[0\]\.remote\.report: Field required$"),
        ({"stages": ["baseline"], "devices": []}, r"^devices: List should have at least 1 item"),
        (
            {"stages": [{"export": {"target": "phone"}}]},
            r"^stages\[0\]\.export\.target: Input should be 'onnx' or 'mobile' \(got 'phone'\)$",
        ),
    ],
)
def test_bad_configs_name_the_key_path(stages_or_overrides, message):
    with pytest.raises(UserError, match=message):
        parse_config(small_config(**stages_or_overrides))


def test_contradicting_plan_is_refused_before_anything_runs():
    config = parse_config(small_config(["baseline", {"finetune": {"qat": True}}, "export", "quantize"]))
    with pytest.raises(UserError, match=r"^stages\[3\]\.quantize: the model is already INT8"):
        build_plan(config)
    config = parse_config(small_config(["export", "prune"]))
    with pytest.raises(
        UserError, match=r"^stages\[1\]\.prune: cannot take a 'onnx' model \(made by stages\[0\]\.export\)"
    ):
        build_plan(config)


def test_malformed_yaml_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages:\n  - prune: {pruning_ratio: 0.5\n")
    with pytest.raises(UserError, match=r"bad\.yaml: malformed YAML at line \d+, column \d+"):
        load_config(path)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\nstages: [baseline]\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(path)


def test_relative_checkpoint_is_taken_from_the_config_folder(tmp_path):
    cfg = small_config(["baseline"], model={"name": "tiny_cnn", "checkpoint": "weights.safetensors"})
    config = load_config(write_config(tmp_path / "c.yaml", cfg))
    assert config.model.checkpoint == tmp_path / "weights.safetensors"


def test_device_profiles_read_like_stages(tmp_path):
    raw = small_config(
        ["baseline"],
        devices=[
            {"host": {"threads": [1, 2], "batch_sizes": [1, 32]}},
            {"arm64-emulated": {"core": "cortex-a53"}},
            {"remote": {"report": "pi4.json", "name": "pi4"}},
        ],
    )
    config = load_config(write_config(tmp_path / "run.yaml", raw))
    host, arm, remote = config.devices
    assert (host.kind, host.threads, host.batch_sizes) == ("host", [1, 2], [1, 32])
    assert (arm.kind, arm.label, arm.runs) == ("arm64-emulated", "arm64-cortex-a53", 10)
    assert remote.report == (tmp_path / "pi4.json").resolve()  # relative to the config's folder
    assert config.host is host


def test_default_device_is_the_host():
    config = parse_config(small_config(["baseline"]))
    assert [d.kind for d in config.devices] == ["host"] and config.host.threads == [1]
