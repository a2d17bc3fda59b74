"""Known-answer tests of the paired per-case comparison (differences, hierarchical bootstrap, seed wins)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunetv2_mapo.benchmark.paired import (
    bootstrap_interval,
    case_values,
    compare,
    paired_differences,
    seed_wins,
)


def summary(values: dict[str, tuple[float, ...]], metric: str = "Dice") -> dict:
    """A summary.json in nnU-Net's layout with one value per class and case."""
    return {"metric_per_case": [
        {"reference_file": f"/gt/{case}.nii.gz", "prediction_file": f"/pred/{case}.nii.gz",
         "metrics": {str(label + 1): {metric: value} for label, value in enumerate(per_class)}}
        for case, per_class in values.items()]}


def test_case_values_average_the_classes_that_have_a_value() -> None:
    got = case_values(summary({"a": (0.8, 0.6), "b": (math.nan, 0.5), "c": (math.nan, math.nan)}), "Dice")
    assert got["a.nii.gz"] == pytest.approx(0.7) and got["b.nii.gz"] == 0.5 and math.isnan(got["c.nii.gz"])


def test_differences_keep_the_pairing_and_drop_cases_without_a_value() -> None:
    other = [{"x": 0.9, "y": 0.8, "z": math.nan}, {"x": 0.7, "y": 0.6, "z": 0.5}]
    base = [{"x": 0.8, "y": 0.9, "z": 0.4}, {"x": 0.7, "y": 0.5, "z": 0.5}]
    np.testing.assert_allclose(paired_differences(other, base), [[0.1, -0.1], [0.0, 0.1]], atol=1e-12)
    with pytest.raises(ValueError, match="same number"):
        paired_differences(other, base[:1])


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    mean, low, high = bootstrap_interval(np.full((3, 20), 0.02), resamples=500)
    assert mean == pytest.approx(0.02) and low == pytest.approx(0.02) and high == pytest.approx(0.02)


def test_the_interval_covers_the_mean_with_the_expected_width() -> None:
    rng = np.random.default_rng(1)
    differences = rng.normal(0.01, 0.05, size=(1, 400))  # one seed: a plain bootstrap over cases
    mean, low, high = bootstrap_interval(differences, resamples=4000, seed=3)
    standard_error = differences.std(ddof=1) / math.sqrt(400)
    assert low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.1)
    assert bootstrap_interval(differences, resamples=4000, seed=3) == (mean, low, high)  # reproducible


def test_seed_to_seed_variation_widens_the_interval() -> None:
    rng = np.random.default_rng(2)
    cases = rng.normal(0.0, 0.01, size=30)
    steady = np.stack([cases + 0.02] * 3)
    shaky = np.stack([cases + 0.02 + shift for shift in (-0.03, 0.0, 0.03)])  # same mean, seeds disagree
    steady_ci = bootstrap_interval(steady, resamples=2000)
    shaky_ci = bootstrap_interval(shaky, resamples=2000)
    assert steady_ci[0] == pytest.approx(shaky_ci[0])
    assert shaky_ci[2] - shaky_ci[1] > 3 * (steady_ci[2] - steady_ci[1])


def test_seed_wins_follow_the_metrics_direction() -> None:
    differences = np.array([[0.1, 0.0], [-0.2, 0.1], [0.0, 0.0]])  # seed means 0.05, -0.05, 0 (a tie)
    assert seed_wins(differences, higher_is_better=True) == 1
    assert seed_wins(differences, higher_is_better=False) == 1


def test_bad_arguments_and_no_cases() -> None:
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(np.zeros((1, 3)), level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval(np.zeros((1, 3)), resamples=0)
    assert all(math.isnan(v) for v in bootstrap_interval(np.zeros((2, 0))))


def test_compare_two_trainers_on_dice_and_asd() -> None:
    base = [summary({"a": (0.80,), "b": (0.60,)}), summary({"a": (0.70,), "b": (0.70,)})]
    other = [summary({"a": (0.85,), "b": (0.65,)}), summary({"a": (0.75,), "b": (0.70,)})]
    base_asd = [summary({"a": (2.0,), "b": (4.0,)}, "ASD")] * 2
    other_asd = [summary({"a": (1.0,), "b": (4.0,)}, "ASD")] * 2
    dice = compare(other, base, ["Dice"], resamples=500)["Dice"]
    assert dice["mean_difference"] == pytest.approx(0.0375) and dice["seed_wins"] == 2
    assert dice["seeds"] == 2 and dice["cases"] == 2 and dice["ci_low"] <= 0.0375 <= dice["ci_high"]
    assert dice["relative"] == pytest.approx(0.0375 / 0.70)
    asd = compare(other_asd, base_asd, ["ASD"], resamples=500)["ASD"]
    assert asd["mean_difference"] == pytest.approx(-0.5) and asd["seed_wins"] == 2
    assert asd["relative"] == pytest.approx(-0.5 / 3.0)
