"""``round_to: auto``: the rule that picks a channel multiple from side-by-side timings, and the
measurement on a residual model (ResNet-18, quarter width); the stage's ``round_to: auto`` on
MobileNetV3-small is in tests/stages/test_prune_latency.py."""

from __future__ import annotations

from edgeslim.api import parse_config
from edgeslim.data.datasets import load_data
from edgeslim.models.zoo import build_model
from edgeslim.prune.multiples import Multiple, choose_multiple, describe, measure_multiples
from tests.conftest import small_config


def _row(multiple: int, p50: float, macs: int) -> Multiple:
    return Multiple(multiple, p50, params=macs // 10, macs=macs)


def test_a_multiple_pays_only_when_it_spends_clearly_less_time_per_mac():
    # rounding down to 8 removes 5% of the work and 40% of the time: it pays
    assert choose_multiple([_row(1, 1.0, 1000), _row(8, 0.6, 950)]) == 8
    # the same time per MAC (it is faster only because it prunes more): it does not
    assert choose_multiple([_row(1, 1.0, 1000), _row(8, 0.9, 900), _row(16, 0.8, 800)]) == 1
    # within the 5% margin: noise, not a layout
    assert choose_multiple([_row(1, 1.0, 1000), _row(4, 0.97, 1000)]) == 1


def test_the_smallest_paying_multiple_within_the_margin_of_the_best_wins():
    rows = [_row(1, 1.0, 1000), _row(4, 0.9, 1000), _row(8, 0.55, 980), _row(16, 0.53, 960)]
    assert choose_multiple(rows) == 8  # 16 is 1% better per MAC and removes more channels
    rows[3] = _row(16, 0.30, 960)
    assert choose_multiple(rows) == 16  # clearly better


def test_describe_gives_the_table_and_one_line():
    rows = [_row(1, 1.0, 1000), _row(8, 0.6, 950)]
    details, note = describe(rows, 8, 0.4)
    assert details["chosen"] == 8 and set(details["measured"]) == {"1", "8"}
    assert "multiples of 8" in note and "\n" not in note


def test_measured_on_resnet18_every_multiple_is_timed_and_rounding_changes_the_structure():
    import torch_pruning as tp

    cfg = parse_config(
        small_config(["baseline"], data={"name": "digits", "max_samples": 120, "image_size": 32}, name="m")
    )
    data = load_data(cfg.data)
    model = build_model("resnet18", {"width_mult": 0.25, "small_input": True}, 1, 10).eval()
    example = data.train.inputs[:1]

    def prune_uniform(copy_, multiple):
        pruner = tp.pruner.MetaPruner(
            copy_,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.4,
            ignored_layers=[copy_.fc],
            round_to=multiple if multiple > 1 else None,
        )
        pruner.step()
        return copy_

    measured = measure_multiples(model, example, prune_uniform, data, cfg.host, cfg.measure)
    multiples = [m.multiple for m in measured]
    assert multiples == [1, 4, 8, 16]
    assert measured[1].params < measured[0].params  # torch-pruning rounds kept counts down
    assert len({m.params for m in measured}) == 4  # four different structures
    assert all(m.p50_ms > 0 and m.macs > 0 for m in measured)
    assert choose_multiple(measured) in multiples
