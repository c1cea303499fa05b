"""The seeded bootstrap behind every speed-up: intervals that contain the truth, verdicts on known effects."""

from __future__ import annotations

import numpy as np

from edgeslim.engine.stats import (
    FASTER,
    SLOWER,
    TOO_FEW_SAMPLES,
    WITHIN_NOISE,
    median_interval,
    ratio_of_medians,
)


def timings(scale: float, seed: int, n: int = 200) -> np.ndarray:
    """Latency-like samples: a floor plus a right-skewed tail, median about ``scale``."""
    rng = np.random.default_rng(seed)
    return scale * (0.9 + rng.gamma(2.0, 0.06, n))


def test_median_interval_holds_the_median_and_is_seeded():
    samples = timings(1.0, 0)
    low, high = median_interval(samples)
    assert low < np.median(samples) < high and high - low < 0.05
    assert median_interval(samples) == (low, high)  # the same seed, the same interval
    wide = median_interval(samples[:20])
    assert wide[1] - wide[0] > high - low  # fewer timings, a wider interval


def test_ratio_of_medians_on_known_effects():
    base = timings(1.0, 1)
    ratio, ci, verdict = ratio_of_medians(base, timings(1.25, 2))  # 25% slower
    assert ci is not None and ci[0] <= ratio <= ci[1] < 0.98 and verdict == SLOWER
    assert abs(ratio - 0.8) < 0.03
    ratio, ci, verdict = ratio_of_medians(base, timings(0.5, 3))  # twice as fast
    assert ci is not None and ci[0] > 1.02 and verdict == FASTER and abs(ratio - 2.0) < 0.1
    _, ci, verdict = ratio_of_medians(base, timings(1.0, 4))  # the same model
    assert ci is not None and ci[0] < 1 < ci[1] and verdict == WITHIN_NOISE
    ratio, ci, verdict = ratio_of_medians(base[:4], timings(1.0, 5)[:4])
    assert ci is None and verdict == TOO_FEW_SAMPLES and ratio > 0
