"""Known-answer tests of the equal-compute arm's iterations."""

from __future__ import annotations

import pytest

from nnunetv2_mapo.benchmark.compute import equal_compute_iterations, mapo_extra_iterations, mapo_schedule

SETTINGS = {"mapo_warmup_epochs": 2, "mapo_regen_every": 4, "mapo_cases_per_round": 10, "mapo_num_hypotheses": 5,
            "mapo_max_pair_uses": None}  # no bound on reuse: a round every 4 epochs


def test_extra_passes_of_steps_and_rounds() -> None:
    # batch 8: 1 pair row per step; pairs in epochs 2-9 (8 epochs x 20 steps = 160 rows); rounds at epochs 2 and 6,
    # 10 cases x (5 hypotheses + the reference pass) forward passes each, at a third of a training pass (40 rows)
    assert mapo_extra_iterations(10, 0, 20, 8, 30, SETTINGS) == pytest.approx((160 + 40) / 8)
    assert equal_compute_iterations(10, 0, 20, 8, 30, SETTINGS) == 23  # 20 + 25 / 10 = 22.5
    # after a shared warm-up of 2 epochs the same extra is spread over the 8 epochs trained: 20 + 25 / 8
    assert equal_compute_iterations(10, 2, 20, 8, 30, SETTINGS) == 24


def test_reference_free_rounds_and_few_cases_cost_less() -> None:
    simpo = SETTINGS | {"mapo_loss_type": "simpo"}  # K passes per case, no reference pass
    assert mapo_extra_iterations(10, 0, 20, 8, 30, simpo) == pytest.approx((160 + 2 * 10 * 5 / 3) / 8)
    few = mapo_extra_iterations(10, 0, 20, 8, 4, SETTINGS)  # a round takes the 4 training cases there are
    assert few == pytest.approx((160 + 2 * 4 * 6 / 3) / 8)


def test_patches_per_case_and_pairs_against_the_prediction() -> None:
    patches = SETTINGS | {"mapo_patches_per_case": 3}  # 3 patches of each of the 10 cases per round
    assert mapo_extra_iterations(10, 0, 20, 8, 30, patches) == pytest.approx((160 + 2 * 30 * 6 / 3) / 8)
    against = SETTINGS | {"mapo_pairing": "ground_truth_over_prediction"}  # one pass per case: the prediction
    assert mapo_extra_iterations(10, 0, 20, 8, 30, against) == pytest.approx((160 + 2 * 10 * 1 / 3) / 8)


def test_mirrored_pairs_count_a_reference_pass_per_further_view() -> None:
    mirrored = SETTINGS | {"mapo_mirror_pairs": True}  # 2d: 3 more views, 3d: 7 more, for every case of a round
    extra = lambda settings, dims: mapo_extra_iterations(10, 0, 20, 8, 30, settings, spatial_dims=dims)  # noqa: E731
    assert extra(mirrored, 2) == pytest.approx((160 + 2 * 10 * 9 / 3) / 8)
    assert extra(mirrored, 3) == pytest.approx((160 + 2 * 10 * 13 / 3) / 8)
    free = mirrored | {"mapo_loss_type": "simpo"}  # no reference, so no view's reference either
    assert extra(free, 3) == pytest.approx((160 + 2 * 10 * 5 / 3) / 8)


def test_a_bound_on_pair_reuse_brings_the_next_round_forward() -> None:
    # each of the 10 pairs drawn once: a set lasts 10 of an epoch's 20 steps, so a round at every epoch 2-9
    once = SETTINGS | {"mapo_max_pair_uses": 1}
    assert mapo_extra_iterations(10, 0, 20, 8, 30, once) == pytest.approx((8 * 10 + 8 * 10 * 6 / 3) / 8)
    # 10 uses each outlast the 4 epochs between rounds (100 rows of 80): the schedule without a bound
    assert mapo_extra_iterations(10, 0, 20, 8, 30, SETTINGS | {"mapo_max_pair_uses": 10}) == pytest.approx(
        mapo_extra_iterations(10, 0, 20, 8, 30, SETTINGS))


def test_defaults_are_the_trainers() -> None:
    resolved = mapo_schedule(100, {}, 16)
    assert resolved["mapo_warmup_epochs"] == 10 and resolved["mapo_pairs_per_step"] == 2.0
    assert resolved["mapo_regen_every"] == 50 and resolved["mapo_num_hypotheses"] == 8
    assert resolved["mapo_max_pair_uses"] == 4
    # 100 epochs x 250 steps x 2 pairs: 100 cases x 4 uses = 400 rows spend a set within each epoch, so a round at
    # every epoch 10-99 (90 x 100 x 9 / 3) and 400 pair rows per epoch
    assert mapo_extra_iterations(100, 0, 250, 16, 500, {}) == pytest.approx((90 * 400 + 90 * 100 * 9 / 3) / 16)


def test_no_epoch_to_train_is_refused() -> None:
    with pytest.raises(ValueError, match="No epoch"):
        equal_compute_iterations(10, 10, 20, 8, 30, SETTINGS)


def test_online_pairs_cost_their_rows_and_a_round_per_row() -> None:
    # 8 epochs x 20 steps x 1 pair row; each row also ran K + 1 = 6 forward passes at its step
    online = SETTINGS | {"mapo_online_pairs": True}
    assert mapo_extra_iterations(10, 0, 20, 8, 30, online) == pytest.approx((160 + 160 * 6 / 3) / 8)
