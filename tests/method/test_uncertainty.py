"""Tests of ``nnunetv2_mapo.method.uncertainty``: entropy and mutual information with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunetv2_mapo.method.uncertainty import UncertaintyAccumulator, entropy


def test_entropy_known_values() -> None:
    probabilities = np.array([[0.5, 1.0, 0.25], [0.5, 0.0, 0.25], [0.0, 0.0, 0.5]])  # classes x voxels
    assert entropy(probabilities) == pytest.approx([math.log(2), 0.0, 1.5 * math.log(2)])
    regions = np.array([[0.5, 1.0], [0.5, 0.0]])  # two independent regions x voxels
    assert entropy(regions, regions=True) == pytest.approx([2 * math.log(2), 0.0])


def test_identical_samples_have_zero_mutual_information() -> None:
    accumulator = UncertaintyAccumulator()
    sample = np.array([[0.7, 0.2], [0.3, 0.8]])
    for _ in range(4):
        accumulator.add(sample)
    assert accumulator.mutual_information() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert accumulator.predictive_entropy() == pytest.approx(entropy(sample))


def test_confident_samples_that_disagree_are_all_epistemic() -> None:
    accumulator = UncertaintyAccumulator()
    accumulator.add(np.array([[1.0], [0.0]]))
    accumulator.add(np.array([[0.0], [1.0]]))
    assert accumulator.mean_probabilities().ravel() == pytest.approx([0.5, 0.5])
    assert accumulator.predictive_entropy() == pytest.approx([math.log(2)])
    assert accumulator.mutual_information() == pytest.approx([math.log(2)])  # each sample is certain


def test_regions_and_errors() -> None:
    accumulator = UncertaintyAccumulator(regions=True)
    accumulator.add(np.array([[0.9], [0.1]]))
    accumulator.add(np.array([[0.1], [0.9]]))
    assert accumulator.mutual_information()[0] > 0
    with pytest.raises(ValueError, match="does not match"):
        accumulator.add(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="No sample"):
        UncertaintyAccumulator().predictive_entropy()
