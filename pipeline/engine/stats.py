"""Is a latency difference real? Seeded bootstrap intervals of medians and of ratios of medians.

Two medians of a few hundred timings differ by a percent or two even for the same model, and far
more on a busy machine. A speed-up is therefore given as the ratio of medians with a percentile
bootstrap interval, and called faster or slower only when the whole interval clears ``min_effect``.
Used by the runner (every stage against the previous stage and the baseline, timed side by side)
and by ``edgeslim compare``. Only numpy: no model code, no torch.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MIN_EFFECT = 0.02
DEFAULT_CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_SAMPLES = 5  # a bootstrap of fewer timings gives an interval that means nothing

FASTER = "faster"
SLOWER = "slower (regression)"
WITHIN_NOISE = "within noise"
TOO_FEW_SAMPLES = "too few samples"


def bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``resamples`` resamples with replacement, vectorised in chunks of a few million values."""
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.size
    rows_per_chunk = max(1, 4_000_000 // n)
    medians = np.empty(resamples)
    for start in range(0, resamples, rows_per_chunk):
        stop = min(resamples, start + rows_per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        medians[start:stop] = np.median(samples[idx], axis=1)
    return medians


def median_interval(
    samples: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``samples``."""
    medians = bootstrap_medians(samples, resamples, np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return float(low), float(high)


def speedup_interval(
    baseline: np.ndarray,
    candidate: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of median(baseline) / median(candidate); > 1 means faster."""
    rng = np.random.default_rng(seed)
    base = bootstrap_medians(baseline, resamples, rng)
    cand = bootstrap_medians(candidate, resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = base / cand
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(low), float(high)


def noise_verdict(ci: tuple[float, float], min_effect: float) -> str:
    low, high = ci
    if low > 1.0 + min_effect:
        return FASTER
    if high < 1.0 - min_effect:
        return SLOWER
    return WITHIN_NOISE


def ratio_of_medians(
    reference: np.ndarray,
    candidate: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    min_effect: float = DEFAULT_MIN_EFFECT,
) -> tuple[float, tuple[float, float] | None, str]:
    """median(reference) / median(candidate) (> 1: the candidate is faster), its bootstrap interval
    and the noise verdict; no interval (``too few samples``) below ``MIN_SAMPLES`` timings."""
    reference, candidate = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    ratio = float(np.median(reference) / np.median(candidate))
    if min(reference.size, candidate.size) < MIN_SAMPLES:
        return ratio, None, TOO_FEW_SAMPLES
    ci = speedup_interval(reference, candidate, confidence)
    return ratio, ci, noise_verdict(ci, min_effect)
