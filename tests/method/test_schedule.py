"""Tests of ``nnunetv2_mapo.method.schedule``: rates per hypothesis, pairs per step, the reuse bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunetv2_mapo.method.schedule import PairReuse, hypothesis_rates, pairs_for_step


def test_hypothesis_rates_one_per_hypothesis():
    rates = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
    assert hypothesis_rates(rates, 8) == list(rates)


def test_hypothesis_rates_spread_evenly():
    assert hypothesis_rates([0.1, 0.2], 4) == [0.1, 0.1, 0.2, 0.2]
    assert hypothesis_rates([0.1, 0.2, 0.3], 6) == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    spread = hypothesis_rates([0.1, 0.2, 0.3], 8)
    assert len(spread) == 8
    assert spread == sorted(spread)
    counts = [spread.count(r) for r in (0.1, 0.2, 0.3)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 8


def test_hypothesis_rates_single_rate_and_fewer_hypotheses():
    assert hypothesis_rates([0.25], 3) == [0.25, 0.25, 0.25]
    fewer = hypothesis_rates([0.1, 0.2, 0.3, 0.4], 2)
    assert len(fewer) == 2 and set(fewer) <= {0.1, 0.2, 0.3, 0.4}
    assert fewer[0] == 0.1
    assert all(type(r) is float for r in hypothesis_rates(np.array([0.1, 0.2]), 3))


# ------------------------------------------------------------------------------------------- pairs per step
@pytest.mark.parametrize("rate", [0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 2.0, 17.125, 0.1, 1 / 3])
def test_pair_counts_average_the_rate_and_alternate_floor_and_ceiling(rate):
    counts = [pairs_for_step(rate, step) for step in range(240)]
    assert counts[0] >= 1  # the first step after a round always trains on a pair
    assert set(counts) <= {math.floor(rate), math.ceil(rate)}
    for n in (1, 7, 80, 240):  # every prefix carries ceil(rate x n): never more than one pair ahead
        assert sum(counts[:n]) == math.ceil(round(rate * n, 9))


def test_pair_counts_of_a_fraction_follow_the_pattern():
    assert [pairs_for_step(0.375, step) for step in range(8)] == [1, 0, 1, 0, 0, 1, 0, 0]
    assert [pairs_for_step(2, step) for step in range(3)] == [2, 2, 2]


@pytest.mark.parametrize(("rate", "step"), [(0, 0), (-1, 0), (float("nan"), 0), (0.5, -1)])
def test_pair_counts_reject_bad_input(rate, step):
    with pytest.raises(ValueError, match="pairs_per_step|step"):
        pairs_for_step(rate, step)


# ------------------------------------------------------------------------------------------------ PairReuse
def test_pair_reuse_draws_every_pair_once_before_any_twice_and_stops_at_the_bound() -> None:
    reuse = PairReuse(5, max_uses=2)
    generator = torch.Generator().manual_seed(0)
    first = torch.cat([reuse.draw(2, generator), reuse.draw(2, generator), reuse.draw(1, generator)])
    assert sorted(first.tolist()) == [0, 1, 2, 3, 4]  # a first pass over the set, without repeats
    assert not reuse.spent
    second = reuse.draw(4, generator)
    assert len(set(second.tolist())) == 4 and reuse.uses.tolist().count(2) == 4
    last = int((reuse.uses < 2).nonzero()[0])
    assert reuse.draw(3, generator).tolist() == [last]  # only one pair has a use left
    assert reuse.spent and reuse.uses.tolist() == [2] * 5
    assert len(reuse.draw(3, generator)) == 0  # spent: nothing more


def test_pair_reuse_without_a_bound_repeats_pairs_and_is_never_spent() -> None:
    reuse = PairReuse(2, max_uses=None)
    drawn = reuse.draw(5, torch.Generator().manual_seed(1))
    assert len(drawn) == 5 and sorted(reuse.uses.tolist()) == [2, 3]  # balanced: each pair in turn
    assert not reuse.spent
    assert not PairReuse(0, max_uses=1).spent and len(PairReuse(0, 1).draw(2, torch.Generator())) == 0


def test_pair_reuse_state_round_trip_and_bad_input() -> None:
    reuse = PairReuse(3, max_uses=4)
    reuse.draw(2, torch.Generator().manual_seed(2))
    other = PairReuse(3, max_uses=4)
    other.load_state_dict(reuse.state_dict())
    assert torch.equal(other.uses, reuse.uses)
    with pytest.raises(ValueError, match="do not fit a set of 5 pairs"):
        PairReuse(5, 4).load_state_dict(reuse.state_dict())
    with pytest.raises(ValueError, match="max_uses must be >= 1"):
        PairReuse(3, 0)
    with pytest.raises(ValueError, match="num_pairs"):
        PairReuse(-1, 1)
