"""Tests of ``nnunetv2_mapo.training.metrics``: the one declaration of every logged quantity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nnunetv2_mapo.training.metrics import (
    LOG_KEYS,
    METRICS,
    ROUND_KEYS,
    STEP_KEYS,
    Metric,
    inactive_step_stats,
    markdown_table,
    panels,
    reduce_step_stats,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_keys_are_unique_and_partition_by_source() -> None:
    assert len(LOG_KEYS) == len(set(LOG_KEYS)) == len(METRICS)
    assert set(STEP_KEYS) | set(ROUND_KEYS) | {"mapo_num_pairs"} == set(LOG_KEYS)
    assert not set(STEP_KEYS) & set(ROUND_KEYS)


def test_trl_names_of_the_rewards() -> None:
    names = {m.key: m.trl_name for m in METRICS}
    assert names["mapo_rewards_chosen"] == "rewards/chosen"
    assert names["mapo_rewards_rejected"] == "rewards/rejected"
    assert names["mapo_reward_accuracy"] == "rewards/accuracies"
    assert names["mapo_reward_margin"] == "rewards/margins"


def test_reduce_known_values() -> None:
    stats = {key: [math.nan, math.nan, math.nan] for key in STEP_KEYS}
    stats["mapo_dpo_loss"] = [0.5, math.nan, 0.7]  # the step without pairs is left out of the mean
    stats["mapo_skipped_steps"] = [0.0, math.nan, 1.0]
    reduced = reduce_step_stats(stats)
    assert set(reduced) == set(STEP_KEYS)
    assert reduced["mapo_dpo_loss"] == pytest.approx(0.6)
    assert reduced["mapo_skipped_steps"] == 1.0
    assert math.isnan(reduced["mapo_reward_accuracy"])  # no value: NaN for a mean ...
    assert reduce_step_stats({key: [math.nan] for key in STEP_KEYS})["mapo_skipped_steps"] == 0.0  # ... 0 for a sum


def test_inactive_stats_are_nan_for_every_step_key() -> None:
    stats = inactive_step_stats()
    assert list(stats) == list(STEP_KEYS) and all(math.isnan(v) for v in stats.values())


def test_panels_keep_declaration_order_and_leave_out_unplotted() -> None:
    layout = panels()
    assert layout[0] == ("preference loss", ("mapo_dpo_loss",))
    assert ("implicit rewards", ("mapo_rewards_chosen", "mapo_rewards_rejected", "mapo_reward_margin")) in layout
    plotted = {key for _, keys in layout for key in keys}
    assert "mapo_skipped_steps" not in plotted and "mapo_dice_no_dropout" in plotted


@pytest.mark.parametrize(("source", "reduction", "message"), [
    ("epoch", "value", "source must be one of"), ("step", "median", "reduction must be one of"),
    ("step", "value", "step metrics are reduced"), ("round", "mean", "step metrics are reduced"),
])
def test_invalid_declarations_raise(source: str, reduction: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Metric("mapo_x", source, reduction, "", "meaning")


def test_docs_list_every_metric() -> None:
    assert markdown_table() in (DOCS / "usage.md").read_text()
