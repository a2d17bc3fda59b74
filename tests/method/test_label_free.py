"""Known-answer tests of the consensus target and its confidence gate (method/label_free.py)."""

from __future__ import annotations

import math

import pytest
import torch
from round_helpers import LABELS, REGIONS

from nnunetv2_mapo.method.label_free import consensus_target


def _labels(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.uint8)


def test_labels_vote_agreement_and_gate() -> None:
    # one item, three candidates over four voxels: voxel 0 background for all, 1 foreground for all,
    # 2 two of three say label 1, 3 label 1, label 2 and background once each (a tie: the lowest label wins)
    candidates = _labels([0, 1, 1, 1], [0, 1, 1, 2], [0, 1, 0, 0]).unsqueeze(0)
    consensus, agreement, confident = consensus_target(candidates, LABELS, confidence=0.7)
    assert consensus.tolist() == [[0, 1, 1, 0]]
    assert consensus.dtype == torch.int64
    # the mean over voxels 1-3 (some candidate says foreground): (1 + 2/3 + 1/3) / 3
    assert agreement.item() == pytest.approx(2 / 3)
    assert confident.tolist() == [False]
    assert consensus_target(candidates, LABELS, confidence=0.6)[2].tolist() == [True]


def test_agreeing_candidates_are_confident_and_background_is_left_out() -> None:
    # a small structure in a large patch: full agreement wherever anyone says foreground
    background = [0] * 20
    candidates = _labels([1, 1] + background, [1, 1] + background).unsqueeze(0)
    consensus, agreement, confident = consensus_target(candidates, LABELS, confidence=1.0)
    assert agreement.item() == 1.0 and confident.item()
    # one candidate sees an extra voxel: that voxel counts (agreement 1/2), the 19 shared background voxels do not
    candidates = _labels([1, 1, 1] + background[1:], [1, 1] + background).unsqueeze(0)
    assert consensus_target(candidates, LABELS, confidence=0.9)[1].item() == pytest.approx((1 + 1 + 0.5) / 3)


def test_no_foreground_gives_nan_agreement_and_no_target() -> None:
    candidates = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    candidates[1, :, 1, 1] = 2
    _, agreement, confident = consensus_target(candidates, LABELS, confidence=0.5)
    assert math.isnan(agreement[0].item()) and agreement[1].item() == 1.0
    assert confident.tolist() == [False, True]


def test_regions_vote_per_region_and_the_least_certain_region_decides() -> None:
    # (N=1, M=4, R=2, 3 voxels): region 0 agreed on voxels 0 and 1, region 1 split 3:1 on voxel 1
    candidates = torch.zeros(1, 4, 2, 3, dtype=torch.bool)
    candidates[0, :, 0, :2] = True
    candidates[0, :3, 1, 1] = True
    consensus, agreement, _ = consensus_target(candidates, REGIONS, confidence=0.5)
    assert consensus.dtype == torch.bool
    assert consensus[0].tolist() == [[True, True, False], [False, True, False]]
    # voxels 0 and 1 have foreground; voxel 0 agrees fully, voxel 1's least certain region has 3 of 4
    assert agreement.item() == pytest.approx((1 + 0.75) / 2)


@pytest.mark.parametrize("confidence", [0.0, -0.1, 1.01])
def test_a_confidence_outside_the_unit_interval_is_refused(confidence: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        consensus_target(torch.zeros(1, 2, 3, dtype=torch.uint8), LABELS, confidence)
