"""Schedules inside a round and between rounds: pairs per training step, dropout rate per hypothesis."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pairs_for_step(pairs_per_step: float, step: int) -> int:
    """How many pairs training step ``step`` (0-based) carries so that steps ``0..n-1`` carry ``ceil(rate x n)``.

    A fractional rate alternates between its floor and its ceiling (0.375: 1, 0, 1, 0, 0, 1, 0, 0, ...), so the
    extra compute stays ``rate / batch size`` on average, and with nnU-Net's SGD momentum of 0.99 a pair every few
    steps acts like a fraction of one every step. Step 0 always carries at least one pair.

    Args:
        pairs_per_step: The average number of pairs per step, > 0.
        step: The index of the step among the steps with a preference set.

    Raises:
        ValueError: A rate <= 0 or a negative step.
    """
    if not pairs_per_step > 0:
        raise ValueError(f"pairs_per_step must be > 0, got {pairs_per_step}.")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")

    def carried(n: int) -> int:  # rounding first: 0.1 x 30 must give 3, not ceil(3.0000000000000004) = 4
        return math.ceil(round(pairs_per_step * n, 9))

    return carried(step + 1) - carried(step)


def hypothesis_rates(dropout_rates: Sequence[float], num_hypotheses: int) -> list[float]:
    """Spreads the configured rates evenly over K hypotheses (each rate used about K/len(rates) times)."""
    return [float(dropout_rates[k * len(dropout_rates) // num_hypotheses]) for k in range(num_hypotheses)]
