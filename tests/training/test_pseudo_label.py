"""Tests of nnUNetTrainerPseudoLabel's parts (training/pseudo_label.py); its training end to end is in
test_unlabeled_e2e.py."""

from __future__ import annotations

import math

import pytest
import torch

from nnunetv2_mapo.training.pseudo_label import PSEUDO_LABEL_SETTINGS, nnUNetTrainerPseudoLabel, prediction_confidence
from nnunetv2_mapo.training.settings import UNLABELED_SETTING_NAMES


def test_softmax_confidence_is_the_mean_winning_probability_over_the_predicted_foreground() -> None:
    # two classes over three voxels: voxel 0 background (left out), voxels 1 and 2 foreground at p = 0.8 and 0.6
    probabilities = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.8, 0.6]])
    logits = probabilities.log().unsqueeze(0)
    assert prediction_confidence(logits, regions=False).item() == pytest.approx(0.7)


def test_a_prediction_without_foreground_has_no_confidence() -> None:
    logits = torch.tensor([[[3.0, 3.0]], [[-3.0, -3.0]]]).permute(1, 0, 2)  # (N=1, C=2, 2 voxels), background wins
    assert math.isnan(prediction_confidence(logits, regions=False).item())


def test_region_confidence_is_that_of_the_least_certain_region() -> None:
    # regions (R=2) over two voxels: voxel 0 foreground in region 0 at p=0.9, region 1 at p=0.3 -> min(0.9, 0.7)
    # voxel 1 background everywhere (left out)
    probabilities = torch.tensor([[[0.9, 0.1], [0.3, 0.2]]])
    logits = torch.logit(probabilities)
    assert prediction_confidence(logits, regions=True).item() == pytest.approx(0.7, abs=1e-5)


def test_pseudo_targets_join_every_deep_supervision_scale_at_its_resolution() -> None:
    targets = [torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, 2)]
    pseudo = torch.zeros(1, 1, 8, 8)
    pseudo[0, 0, :4, :4] = 1
    joined = nnUNetTrainerPseudoLabel._with_pseudo_targets(None, targets, pseudo)
    assert [tuple(t.shape) for t in joined] == [(3, 1, 8, 8), (3, 1, 4, 4), (3, 1, 2, 2)]
    assert joined[1][2, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert joined[2][2, 0].tolist() == [[1, 0], [0, 0]]
    single = nnUNetTrainerPseudoLabel._with_pseudo_targets(None, torch.zeros(2, 1, 8, 8), pseudo)
    assert single.shape == (3, 1, 8, 8)  # without deep supervision: one target


def test_it_reads_the_unlabeled_settings_and_the_mapo_keys_that_carry_over() -> None:
    assert set(UNLABELED_SETTING_NAMES) <= set(PSEUDO_LABEL_SETTINGS)
    assert {"mapo_warmup_epochs", "mapo_pairs_per_step", "mapo_seed", "num_epochs"} <= set(PSEUDO_LABEL_SETTINGS)
    assert "mapo_beta" not in PSEUDO_LABEL_SETTINGS
