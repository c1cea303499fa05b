"""Compression search: Optuna's samplers over ordinary pipeline runs (``edgeslim search``).

space.py (the ``search:`` block: key paths, ranges, objectives, budget), storage.py (the study's
RDB storage, claims, dead workers' trials), trials.py (one trial = one cached run; shared stage
prefixes; objectives; early stopping on the curve), front.py (summary, Pareto front, importances,
the best trial), search.py (the loop, ``search`` and ``export_best``).
"""
