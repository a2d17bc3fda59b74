"""Schedules inside a round and between rounds: pairs per training step, dropout rate per hypothesis, and how often
each pair may be drawn."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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


class PairReuse:
    """How often each pair of the set in use has been drawn, and which pairs may still be drawn.

    A training step draws the least-used pairs first (ties broken at random), so that every pair is used once before
    any is used twice, as epochs go over a dataset. With ``max_uses`` a pair drawn that often is retired; once every
    pair is retired the set is spent, and the trainer runs the next round at the next epoch's start. This bounds
    how far a loss can fit one fixed pair, whatever the training's length or the steps between rounds.

    Args:
        num_pairs: Pairs in the set.
        max_uses: Draws allowed per pair, >= 1, or None (no bound).

    Raises:
        ValueError: ``num_pairs`` < 0 or ``max_uses`` < 1.
    """

    def __init__(self, num_pairs: int, max_uses: int | None) -> None:
        if num_pairs < 0:
            raise ValueError(f"num_pairs must be >= 0, got {num_pairs}.")
        if max_uses is not None and max_uses < 1:
            raise ValueError(f"max_uses must be >= 1 or None, got {max_uses}.")
        self.max_uses = max_uses
        self.uses = torch.zeros(num_pairs, dtype=torch.long)

    @property
    def spent(self) -> bool:
        """Every pair has been drawn ``max_uses`` times (never without a bound, nor for an empty set)."""
        return self.max_uses is not None and len(self.uses) > 0 and bool((self.uses >= self.max_uses).all())

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of up to ``count`` distinct pairs, the least used first; fewer (or none) when the pairs left
        are fewer. A set smaller than ``count`` without a bound gives each pair more than once.

        Args:
            count: Pairs wanted, >= 0.
            generator: Breaks ties between equally used pairs.
        """
        if len(self.uses) == 0 or count <= 0:
            return torch.zeros(0, dtype=torch.long)
        drawn: list[torch.Tensor] = []
        wanted = count
        while wanted > 0:  # one pass over the set per round of the loop: a pair at most once per pass
            order = torch.argsort(self.uses.double() + torch.rand(len(self.uses), generator=generator,
                                                                  dtype=torch.float64))
            if self.max_uses is not None:
                order = order[self.uses[order] < self.max_uses]
            take = order[:wanted]
            if len(take) == 0:
                break
            self.uses[take] += 1
            drawn.append(take)
            wanted -= len(take)
        return torch.cat(drawn) if drawn else torch.zeros(0, dtype=torch.long)

    def state_dict(self) -> dict:
        return {"uses": self.uses.clone(), "max_uses": self.max_uses}

    def load_state_dict(self, state: dict) -> None:
        """Restores the use counts of the same set.

        Raises:
            ValueError: Counts of another number of pairs.
        """
        uses = state["uses"]
        if not isinstance(uses, torch.Tensor) or uses.shape != self.uses.shape:
            raise ValueError(f"Pair use counts of shape {getattr(uses, 'shape', None)} do not fit a set of "
                             f"{len(self.uses)} pairs.")
        self.uses = uses.clone().long()
