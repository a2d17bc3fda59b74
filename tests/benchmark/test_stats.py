"""Tests of ``nnunetv2_mapo.benchmark.stats``."""

from __future__ import annotations

import math

import pytest
from benchmark_helpers import MAPO, run

from nnunetv2_mapo.benchmark.spec import (
    BASELINE_TRAINER,
)
from nnunetv2_mapo.benchmark.stats import aggregate, epoch_timing, paired_ratios, round_dice, summarize


def test_aggregate_is_mean_and_sample_std_of_finite_values() -> None:
    stat = aggregate([1.0, 2.0, 3.0, math.nan, None])
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(2.0) and stat["std"] == pytest.approx(1.0)
    one = aggregate([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"])
    empty = aggregate([])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])


def test_paired_ratios_pair_runs_by_seed_and_fold() -> None:
    runs = [run(BASELINE_TRAINER, 0, 0, Dice=0.5, wall_seconds=100.0, preference_seconds=None),
            run(MAPO, 0, 0, Dice=0.6, wall_seconds=150.0, preference_seconds=20.0),
            run(BASELINE_TRAINER, 1, 0, Dice=0.8, wall_seconds=100.0, preference_seconds=None),
            run(MAPO, 1, 0, Dice=0.8, wall_seconds=250.0, preference_seconds=30.0),
            run(MAPO, 2, 0, Dice=0.1, wall_seconds=1.0)]  # no baseline partner: left out
    ratios = paired_ratios(runs, BASELINE_TRAINER, MAPO)
    assert ratios["Dice"]["n"] == 2 and ratios["Dice"]["mean"] == pytest.approx((1.2 + 1.0) / 2)
    assert ratios["wall_seconds"]["mean"] == pytest.approx(2.0)
    assert ratios["wall_seconds"]["std"] == pytest.approx(math.sqrt(0.5))
    assert ratios["preference_seconds"]["n"] == 0
    summary = summarize(runs, [BASELINE_TRAINER, MAPO])
    assert summary[MAPO]["Dice"]["n"] == 3 and summary[BASELINE_TRAINER]["Dice"]["mean"] == pytest.approx(0.65)


def test_epoch_timing_counts_own_epochs_only() -> None:
    logging = {"epoch_start_timestamps": [0.0, 10.0, 20.0, 40.0], "epoch_end_timestamps": [9.0, 19.0, 30.0, 50.0],
               "mapo_regen_seconds": [math.nan, math.nan, 4.0, math.nan]}
    timing = epoch_timing(logging, first_epoch=2)
    assert timing["epochs"] == 2 and timing["training_seconds"] == pytest.approx(20.0)
    assert timing["seconds_per_epoch"] == pytest.approx(10.0)
    assert timing["preference_seconds"] == pytest.approx(4.0) and timing["preference_share"] == pytest.approx(0.2)
    plain = epoch_timing({k: v for k, v in logging.items() if k != "mapo_regen_seconds"}, first_epoch=0)
    assert plain["epochs"] == 4 and plain["preference_seconds"] is None


def test_round_dice_averages_the_rounds_after_the_warmup() -> None:
    nan = math.nan
    logging = {"mapo_dice_chosen": [0.1, nan, 0.8, nan, 0.6], "mapo_dice_rejected": [0.0, nan, 0.5, nan, 0.3],
               "mapo_dice_no_dropout": [nan, nan, nan, nan, nan]}
    values = round_dice(logging, first_epoch=2)  # epoch 0's value belongs to the warm-up and is left out
    assert values["round_dice_chosen"] == pytest.approx(0.7)
    assert values["round_dice_rejected"] == pytest.approx(0.4)
    assert values["round_dice_no_dropout"] is None  # logged, but no round ran / older trainer
    assert set(round_dice({}, first_epoch=0).values()) == {None}  # the baseline logs none of them
