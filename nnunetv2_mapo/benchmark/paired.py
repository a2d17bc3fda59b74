"""Paired per-case comparison of two trainers: differences, a hierarchical bootstrap interval, seed wins.

Both trainers of a seed are evaluated on the same cases, so each case gives a paired difference d(s, c) = metric of
the other trainer minus the baseline's, for seed s and case c. The mean difference is the mean over seeds and cases.
Its 95% interval comes from a two-level (hierarchical) percentile bootstrap: resample the seeds with replacement,
then the cases with replacement (the same cases for every drawn seed, keeping the pairing), and take the mean of the
resampled differences; repeat. Resampling seeds carries the variability between trainings, resampling cases that of
the test set; with few seeds the interval is wide, as it should be. A seed wins when its mean difference over the
cases is on the better side (higher Dice and NSD, lower HD95 and ASD).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

HIGHER_IS_BETTER = {"Dice": True, "NSD": True, "HD95": False, "ASD": False}


def case_values(summary: Mapping[str, Any], metric: str) -> dict[str, float]:
    """Per case, the mean of ``metric`` over the foreground classes or regions that have a value.

    Args:
        summary: A ``summary.json`` in nnU-Net's layout (``metric_per_case`` with ``metrics`` per class or region
            and ``reference_file``), as ``nnunetv2_mapo evaluate`` writes it.
        metric: ``Dice``, ``HD95``, ``ASD`` or ``NSD``.

    Returns:
        ``{case file name: value}``; NaN where no class has a finite value (for example no structure found).
    """
    values = {}
    for case in summary["metric_per_case"]:
        per_class = [float(m[metric]) for m in case["metrics"].values() if m.get(metric) is not None]
        finite = [v for v in per_class if math.isfinite(v)]
        values[case["reference_file"].replace("\\", "/").rsplit("/", 1)[-1]] = (
            float(np.mean(finite)) if finite else math.nan)
    return values


def common_cases(maps: Sequence[Mapping[str, float]]) -> list[str]:
    """The cases with a finite value in every map, sorted."""
    return sorted(set.intersection(*(set(k for k, v in m.items() if math.isfinite(v)) for m in maps)))


def paired_differences(other: Sequence[Mapping[str, float]], baseline: Sequence[Mapping[str, float]]
                       ) -> np.ndarray:
    """``d[s, c] = other[s][c] - baseline[s][c]`` over :func:`common_cases` of all the maps.

    Args:
        other: One ``{case: value}`` per seed (:func:`case_values`).
        baseline: The baseline's, for the same seeds in the same order.

    Returns:
        ``(seeds, cases)`` float array, cases in sorted order.

    Raises:
        ValueError: Different numbers of seeds, or no seed.
    """
    if len(other) != len(baseline) or not other:
        raise ValueError(f"Need the same number (>= 1) of seeds for both trainers, got {len(other)} and "
                         f"{len(baseline)}.")
    cases = common_cases([*other, *baseline])
    return np.array([[o[c] - b[c] for c in cases] for o, b in zip(other, baseline)], dtype=float).reshape(
        len(other), len(cases))


def bootstrap_interval(differences: np.ndarray, resamples: int = 10000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """The mean paired difference and its hierarchical percentile bootstrap interval (module docstring).

    Args:
        differences: ``(seeds, cases)`` from :func:`paired_differences`.
        resamples: Bootstrap resamples.
        level: Coverage of the interval, in (0, 1).
        seed: Seed of the resampling (the interval is reproducible).

    Returns:
        ``(mean, low, high)``; NaN for all three without cases.

    Raises:
        ValueError: ``level`` outside (0, 1) or ``resamples`` < 1.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}.")
    differences = np.asarray(differences, dtype=float)
    if differences.ndim != 2 or differences.size == 0:
        return math.nan, math.nan, math.nan
    seeds, cases = differences.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, size=(resamples, seeds))
    case_draws = rng.integers(0, cases, size=(resamples, cases))
    means = differences[seed_draws[:, :, None], case_draws[:, None, :]].mean(axis=(1, 2))
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(differences.mean()), float(low), float(high)


def seed_wins(differences: np.ndarray, higher_is_better: bool) -> int:
    """How many seeds have a mean difference over the cases on the better side (ties are no win)."""
    per_seed = np.asarray(differences, dtype=float).mean(axis=1) if np.size(differences) else np.array([])
    return int((per_seed > 0).sum() if higher_is_better else (per_seed < 0).sum())


def compare(other: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], metrics: Sequence[str],
            resamples: int = 10000) -> dict[str, dict[str, float | int]]:
    """Paired per-case comparison of two trainers on each metric.

    Args:
        other: The other trainer's ``summary.json`` contents, one per seed.
        baseline: The baseline's, for the same seeds in the same order.
        metrics: Keys of :data:`HIGHER_IS_BETTER`.
        resamples: Bootstrap resamples.

    Returns:
        Per metric: ``mean_difference``, ``ci_low``, ``ci_high`` (95%), ``relative`` (mean difference over the
        baseline's mean on the same cases), ``seed_wins``, ``seeds`` and ``cases``.
    """
    result = {}
    for metric in metrics:
        other_values = [case_values(s, metric) for s in other]
        base_values = [case_values(s, metric) for s in baseline]
        differences = paired_differences(other_values, base_values)
        mean, low, high = bootstrap_interval(differences, resamples)
        cases = common_cases([*other_values, *base_values])
        base_mean = float(np.mean([[m[c] for c in cases] for m in base_values])) if cases else math.nan
        result[metric] = {"mean_difference": mean, "ci_low": low, "ci_high": high,
                          "relative": mean / base_mean if cases and base_mean != 0 else math.nan,
                          "seed_wins": seed_wins(differences, HIGHER_IS_BETTER[metric]),
                          "seeds": int(differences.shape[0]), "cases": len(cases)}
    return result
