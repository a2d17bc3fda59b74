"""Tests of the unlabeled round's choice of cases (training/unlabeled_round.py); the round itself runs end to end in
test_unlabeled_e2e.py and, as plain torch, in method/test_round.py."""

from __future__ import annotations

from nnunetv2_mapo.training.unlabeled_round import unlabeled_round_cases

KEYS = [f"scan_{i:02d}" for i in range(10)]


def test_all_cases_when_uncapped_sorted() -> None:
    assert unlabeled_round_cases(list(reversed(KEYS)), None, 0, 3) == KEYS
    assert unlabeled_round_cases(KEYS, 50, 0, 3) == KEYS


def test_a_capped_round_draws_a_seeded_sample_that_changes_with_the_round() -> None:
    first = unlabeled_round_cases(KEYS, 4, 12345, 0)
    assert len(first) == 4 and first == sorted(first) and set(first) <= set(KEYS)
    assert unlabeled_round_cases(KEYS, 4, 12345, 0) == first
    assert any(unlabeled_round_cases(KEYS, 4, 12345, r) != first for r in range(1, 4))


def test_ranks_take_disjoint_shares_that_cover_the_round() -> None:
    shares = [unlabeled_round_cases(KEYS, 7, 1, 2, rank, 3) for rank in range(3)]
    assert sorted(sum(shares, [])) == unlabeled_round_cases(KEYS, 7, 1, 2)
    assert [len(s) for s in shares] == [3, 2, 2]
