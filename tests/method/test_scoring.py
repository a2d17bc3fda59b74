"""Tests of ``nnunetv2_mapo.method.scoring``: Dice by nnU-Net's label conventions, choice of pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_mapo.method.scoring import logits_to_masks, mean_foreground_dice, select_pairs, split_target

pytestmark = pytest.mark.usefixtures("mapo_single_thread")

LABELS = LabelManager({"background": 0, "a": 1, "b": 2}, regions_class_order=None)
LABELS_IGNORE = LabelManager({"background": 0, "a": 1, "b": 2, "ignore": 3}, regions_class_order=None)
REGIONS = LabelManager({"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
REGIONS_IGNORE = LabelManager({"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, regions_class_order=[1, 2])


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Hand Dice of two boolean masks; 1 when both are empty."""
    tp, fp, fn = (pred & ref).sum(), (pred & ~ref).sum(), (~pred & ref).sum()
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def region_target(seg: torch.Tensor, label_manager: LabelManager) -> torch.Tensor:
    """nnU-Net's training-format region target ``(N, R[+1], ...)``, made by its own transform."""
    regions = list(label_manager.foreground_regions)
    if label_manager.has_ignore_label:
        regions = regions + [label_manager.ignore_label]
    transform = ConvertSegmentationToRegionsTransform(regions=regions, channel_in_seg=0)
    return torch.stack([transform(segmentation=s.unsqueeze(0))["segmentation"] for s in seg])


def score(hypotheses: np.ndarray, seg: np.ndarray, label_manager: LabelManager) -> torch.Tensor:
    """Scores label hypotheses ``(N, K, ...)`` against a label map ``(N, ...)`` through split_target."""
    target = torch.as_tensor(seg).unsqueeze(1)
    reference, valid = split_target(target, label_manager)
    return mean_foreground_dice(torch.as_tensor(hypotheses, dtype=torch.uint8), reference, valid, label_manager)


# ------------------------------------------------------------------------------------------------ split_target
def test_split_target_labels_without_ignore():
    target = torch.tensor([[[[0, 1], [2, 1]]]], dtype=torch.float32)  # nnU-Net's seg is float or int16
    reference, valid = split_target(target, LABELS)
    assert valid is None
    assert reference.dtype == torch.int64
    assert reference.tolist() == [[[0, 1], [2, 1]]]


def test_split_target_masks_the_ignore_label():
    target = torch.tensor([[[[0, 3], [2, 3]]]], dtype=torch.int16)
    reference, valid = split_target(target, LABELS_IGNORE)
    assert reference.tolist() == [[[0, 0], [2, 0]]]
    assert valid.shape == (1, 1, 2, 2)
    assert valid.tolist() == [[[[True, False], [True, False]]]]


def test_split_target_regions():
    seg = torch.tensor([[[0, 1], [2, 1]]])
    target = region_target(seg, REGIONS)
    reference, valid = split_target(target, REGIONS)
    assert valid is None
    assert reference.dtype == torch.bool
    assert reference[0, 0].tolist() == [[False, True], [True, True]]  # whole = {1, 2}
    assert reference[0, 1].tolist() == [[False, False], [True, False]]  # core = {2}


def test_split_target_regions_with_ignore():
    seg = torch.tensor([[[0, 3], [2, 1]]])
    target = region_target(seg, REGIONS_IGNORE)
    assert target.shape == (1, 3, 2, 2)
    reference, valid = split_target(target, REGIONS_IGNORE)
    assert reference.shape == (1, 2, 2, 2)
    assert valid.tolist() == [[[[True, False], [True, True]]]]
    assert reference[0, 0].tolist() == [[False, False], [True, True]]


# ------------------------------------------------------------------------------------------------ logits_to_masks
def test_logits_to_masks_labels_and_regions():
    logits = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]], [[-5.0, 0.0]]]])  # (1, 3, 1, 2)
    labels = logits_to_masks(logits, LABELS)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[[0, 1]]]
    regions = logits_to_masks(torch.tensor([[[[0.5, -0.5]], [[0.0, 3.0]]]]), REGIONS)
    assert regions.dtype == torch.bool
    assert regions.tolist() == [[[[True, False]], [[False, True]]]]  # sigmoid(0) = 0.5 is not > 0.5


# ------------------------------------------------------------------------------------------------ Dice, labels
def test_label_dice_matches_hand_computation():
    rng = np.random.RandomState(0)
    seg = rng.randint(0, 3, (2, 6, 7))
    hyps = rng.randint(0, 3, (2, 3, 6, 7))
    hyps[0, 0] = seg[0]  # one perfect hypothesis
    scores = score(hyps, seg, LABELS)
    assert scores.shape == (2, 3)
    assert scores.dtype == torch.float32
    for n in range(2):
        for k in range(3):
            expected = np.mean([dice(hyps[n, k] == c, seg[n] == c) for c in (1, 2)])
            assert scores[n, k].item() == pytest.approx(expected, abs=1e-6)
    assert scores[0, 0].item() == 1.0


def test_label_dice_3d():
    rng = np.random.RandomState(1)
    seg = rng.randint(0, 3, (1, 3, 4, 5))
    hyps = rng.randint(0, 3, (1, 2, 3, 4, 5))
    scores = score(hyps, seg, LABELS)
    for k in range(2):
        expected = np.mean([dice(hyps[0, k] == c, seg[0] == c) for c in (1, 2)])
        assert scores[0, k].item() == pytest.approx(expected, abs=1e-6)


def test_background_is_dropped():
    seg = np.zeros((1, 4, 4), dtype=int)
    seg[0, :2, :2] = 1
    seg[0, 2:, 2:] = 2
    hyp = np.zeros((1, 1, 4, 4), dtype=int)
    hyp[0, 0, :2, :2] = 1
    hyp[0, 0, 0, 3] = 1  # a false positive of class 1 on background
    hyp[0, 0, 2:, 2:] = 2
    d1 = 2 * 4 / (2 * 4 + 1)
    with_background = np.mean([dice(hyp[0, 0] == c, seg[0] == c) for c in (0, 1, 2)])
    got = score(hyp, seg, LABELS)[0, 0].item()
    assert got == pytest.approx((d1 + 1.0) / 2, abs=1e-6)
    assert got != pytest.approx(with_background, abs=1e-4)


def test_class_absent_from_both_counts_as_perfect():
    seg = np.zeros((1, 4, 4), dtype=int)
    seg[0, 1:3, 1:3] = 1  # no class 2 anywhere
    hyp = seg[:, None].copy()
    hyp[0, 0, 1, 1] = 0  # class 1: TP 3, FN 1
    got = score(hyp, seg, LABELS)[0, 0].item()
    assert got == pytest.approx((2 * 3 / (2 * 3 + 1) + 1.0) / 2, abs=1e-6)


def test_empty_reference_and_empty_hypothesis_is_perfect():
    seg = np.zeros((1, 4, 4), dtype=int)
    hyps = np.zeros((1, 2, 4, 4), dtype=int)
    hyps[0, 1, 0, 0] = 2  # a single false positive voxel
    scores = score(hyps, seg, LABELS)
    assert scores[0, 0].item() == 1.0
    assert scores[0, 1].item() == pytest.approx(0.5)  # class 1 perfect (absent), class 2 Dice 0


def test_class_missed_entirely_scores_zero_for_that_class():
    seg = np.zeros((1, 4, 4), dtype=int)
    seg[0, 0, :] = 1
    seg[0, 3, :] = 2
    hyp = np.zeros((1, 1, 4, 4), dtype=int)
    hyp[0, 0, 0, :] = 1
    assert score(hyp, seg, LABELS)[0, 0].item() == pytest.approx(0.5)


def test_ignore_label_voxels_do_not_count():
    seg = np.zeros((1, 4, 4), dtype=int)
    seg[0, :2, :2] = 1
    seg[0, 3, :] = 3  # ignored row
    base = seg.copy()
    base[base == 3] = 0
    hyps = np.stack([base[0]] * 3)[None].copy()
    hyps[0, 1, 3, :] = 1  # predictions inside the ignored row: must not matter
    hyps[0, 2, 3, :] = 2
    scores = score(hyps, seg, LABELS_IGNORE)
    assert scores[0].tolist() == [1.0, 1.0, 1.0]
    hyps[0, 2, 2, 0] = 1  # a false positive outside the ignored row does count
    assert score(hyps, seg, LABELS_IGNORE)[0, 2].item() == pytest.approx((2 * 4 / 9 + 1.0) / 2, abs=1e-6)


def test_ignore_label_matches_hand_computation_on_valid_voxels():
    rng = np.random.RandomState(2)
    seg = rng.randint(0, 4, (2, 5, 6))  # includes ignore label 3
    hyps = rng.randint(0, 3, (2, 3, 5, 6))
    scores = score(hyps, seg, LABELS_IGNORE)
    for n in range(2):
        ok = seg[n] != 3
        for k in range(3):
            expected = np.mean([dice((hyps[n, k] == c) & ok, (seg[n] == c) & ok) for c in (1, 2)])
            assert scores[n, k].item() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------ Dice, regions
def region_scores(hyp_regions: torch.Tensor, seg: torch.Tensor, label_manager: LabelManager) -> torch.Tensor:
    reference, valid = split_target(region_target(seg, label_manager), label_manager)
    return mean_foreground_dice(hyp_regions, reference, valid, label_manager)


def test_region_dice_matches_hand_computation():
    rng = np.random.RandomState(3)
    seg = torch.as_tensor(rng.randint(0, 3, (2, 5, 5)))
    hyp_regions = torch.as_tensor(rng.rand(2, 3, 2, 5, 5) > 0.5)
    scores = region_scores(hyp_regions, seg, REGIONS)
    assert scores.shape == (2, 3)
    for n in range(2):
        whole, core = (seg[n] > 0).numpy(), (seg[n] == 2).numpy()
        for k in range(3):
            h = hyp_regions[n, k].numpy()
            expected = np.mean([dice(h[0], whole), dice(h[1], core)])
            assert scores[n, k].item() == pytest.approx(expected, abs=1e-6)


def test_region_dice_from_logits_is_perfect_for_the_reference():
    seg = torch.tensor([[[0, 1, 2], [2, 2, 0], [1, 0, 0]]])
    reference = region_target(seg, REGIONS)
    logits = reference.float() * 8 - 4  # positive where the region is on
    hyps = logits_to_masks(logits, REGIONS).unsqueeze(1)
    assert region_scores(hyps, seg, REGIONS).tolist() == [[1.0]]


def test_region_absent_from_both_counts_as_perfect():
    seg = torch.zeros(1, 4, 4, dtype=torch.long)
    seg[0, :2, :2] = 1  # whole present, core absent
    hyp = torch.zeros(1, 1, 2, 4, 4, dtype=torch.bool)
    hyp[0, 0, 0, :2, :2] = True
    hyp[0, 0, 0, 0, 0] = False
    assert region_scores(hyp, seg, REGIONS)[0, 0].item() == pytest.approx((2 * 3 / 7 + 1.0) / 2, abs=1e-6)


def test_region_ignore_label_is_masked():
    seg = torch.zeros(1, 4, 4, dtype=torch.long)
    seg[0, :2, :2] = 2
    seg[0, 3, :] = 3
    clean = torch.zeros(1, 1, 2, 4, 4, dtype=torch.bool)
    clean[0, 0, :, :2, :2] = True
    noisy = clean.clone()
    noisy[0, 0, :, 3, :] = True  # both regions switched on over the ignored row
    scores = region_scores(torch.cat([clean, noisy], 1), seg, REGIONS_IGNORE)
    assert scores.tolist() == [[1.0, 1.0]]
    without_ignore = region_scores(noisy, torch.where(seg == 3, 0, seg), REGIONS)
    assert without_ignore.item() < 1.0


# ------------------------------------------------------------------------------------------------ select_pairs
def test_select_pairs_picks_best_and_lowest_eligible():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.88], [0.2, 0.6, 0.1, 0.6]])
    chosen, rejected, has_pair = select_pairs(scores, 0.1)
    assert chosen.tolist()[0] == 0 and rejected.tolist()[0] == 1
    assert chosen.tolist()[1] in (1, 3) and rejected.tolist()[1] == 2
    assert has_pair.tolist() == [True, True]


def test_select_pairs_margin_is_inclusive_and_strict_beyond():
    # dyadic values: exact in float32, so the boundary is tested, not rounding
    scores = torch.tensor([[1.0, 0.75], [1.0, 0.8125], [0.5, 0.25], [0.5, 0.375]])
    _, rejected, has_pair = select_pairs(scores, 0.25)
    assert has_pair.tolist() == [True, False, True, False]
    assert rejected[0].item() == 1 and rejected[2].item() == 1


def test_select_pairs_lowest_within_margin_gives_no_pair():
    scores = torch.tensor([[0.80, 0.78, 0.79, 0.77]])
    _, _, has_pair = select_pairs(scores, 0.05)
    assert not has_pair.item()


def test_select_pairs_all_equal_gives_no_pair():
    scores = torch.full((3, 5), 0.6)
    _, _, has_pair = select_pairs(scores, 0.05)
    assert not has_pair.any()


def test_select_pairs_tau_zero_allows_ties_but_never_the_best_itself():
    scores = torch.tensor([[0.5, 0.5, 0.5], [0.7, 0.2, 0.7]])
    chosen, rejected, has_pair = select_pairs(scores, 0.0)
    assert has_pair.tolist() == [True, True]
    assert (chosen != rejected).all()
    assert rejected[1].item() == 1


def test_select_pairs_single_hypothesis_never_pairs():
    chosen, rejected, has_pair = select_pairs(torch.tensor([[0.3], [1.0]]), 0.0)
    assert not has_pair.any()
    assert chosen.tolist() == [0, 0]


def test_select_pairs_margin_one_needs_perfect_and_zero():
    scores = torch.tensor([[1.0, 0.0, 0.5], [0.99, 0.0, 0.5]])
    _, rejected, has_pair = select_pairs(scores, 1.0)
    assert has_pair.tolist() == [True, False]
    assert rejected[0].item() == 1


def test_select_pairs_properties_on_random_scores():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(200, 6, generator=generator)
    scores[:50] = (scores[:50] * 4).round() / 4  # many ties
    original = scores.clone()
    for margin in (0.0, 0.05, 0.3, 0.7):
        chosen, rejected, has_pair = select_pairs(scores, margin)
        assert torch.equal(scores, original)  # input untouched
        rows = torch.arange(scores.shape[0])
        assert torch.equal(scores[rows, chosen], scores.max(1).values)
        for n in range(scores.shape[0]):
            threshold = scores[n, chosen[n]] - margin  # float32, like the scores
            others = [k for k in range(6) if k != chosen[n] and bool(scores[n, k] <= threshold)]
            assert bool(has_pair[n]) == bool(others)
            if others:
                assert rejected[n].item() != chosen[n].item()
                assert rejected[n].item() in others
                assert scores[n, rejected[n]].item() == min(scores[n, k].item() for k in others)
