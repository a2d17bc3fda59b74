"""Tests of ``nnunetv2_mapo.method.objectives``: the boundary score, the adaptive weights, and that they learn."""

from __future__ import annotations

import math

import pytest
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from round_helpers import LABELS, REGIONS, generate, label_batches, tiny_unet

from nnunetv2_mapo.method.objectives import boundary_scores, combine_objectives, objective_weights, objectives_of
from nnunetv2_mapo.method.preference_loss import dpo_loss, mask_log_likelihoods
from nnunetv2_mapo.method.scoring import mean_foreground_dice, split_target

pytestmark = pytest.mark.usefixtures("mapo_single_thread")
BINARY = LabelManager({"background": 0, "lesion": 1}, regions_class_order=None)
PHI_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # standard normal CDF at 1


def square(top: int, left: int, size: int = 5, shape: tuple[int, int] = (20, 20)) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.uint8)
    mask[top:top + size, left:left + size] = 1
    return mask


def test_objectives_of_each_setting_and_a_bad_one() -> None:
    assert objectives_of("dice") == ("dice",)
    assert objectives_of("dice+boundary") == ("dice", "boundary")
    assert objectives_of("boundary") == ("boundary",)
    with pytest.raises(ValueError, match="allowed values"):
        objectives_of("boundary+dice")


def test_boundary_score_known_values() -> None:
    truth = square(5, 5)
    hypotheses = torch.stack([square(5, 5), square(5, 6), square(5, 7), torch.zeros(20, 20, dtype=torch.uint8)])
    scores = boundary_scores(hypotheses[None], truth[None], None, BINARY, tolerance=1.0)[0]
    # identical: 1; shifted by one voxel: every surface voxel within the tolerance; by two: 10 of the 16 surface
    # voxels of each square lie within one voxel of the other's surface (its corners and far side do not); empty: 0
    assert scores.tolist() == pytest.approx([1.0, 1.0, 20 / 32, 0.0])
    assert boundary_scores(hypotheses[None, 2:3], truth[None], None, BINARY, tolerance=2.0).item() == 1.0
    both_empty = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    assert boundary_scores(both_empty, both_empty[:, 0], None, BINARY).item() == 1.0  # as Dice: absent = perfect
    with pytest.raises(ValueError, match="tolerance"):
        boundary_scores(hypotheses[None], truth[None], None, BINARY, tolerance=0.0)


def test_boundary_score_ranks_unlike_dice() -> None:
    truth = square(4, 4, size=10)
    trimmed = truth.clone()
    trimmed[4:14, 13] = 0  # loses the column along its edge: Dice 0.947, its boundary one voxel off
    speck = truth.clone()
    speck[17:19, 0:5] = 1  # gains a speck far away: Dice 0.952, a boundary far from the truth's
    hypotheses = torch.stack([trimmed, speck])[None]
    dice = mean_foreground_dice(hypotheses, truth[None].long(), None, BINARY)[0]
    boundary = boundary_scores(hypotheses, truth[None].long(), None, BINARY)[0]
    assert dice[0] < dice[1] and boundary[0] > boundary[1]
    assert boundary[0].item() == 1.0


def test_boundary_score_ignore_and_regions() -> None:
    network = tiny_unet()
    batches = label_batches(network, ignore=True)
    labels_ignore = LabelManager({"background": 0, "a": 1, "b": 2, "ignore": 3}, regions_class_order=None)
    reference, valid = split_target(batches[0]["target"], labels_ignore)
    wrong_where_ignored = reference.clone()
    wrong_where_ignored[:, 12:, :] = 1  # the band under the ignore label
    hypotheses = wrong_where_ignored[:, None].to(torch.uint8)
    assert torch.all(boundary_scores(hypotheses, reference, valid, labels_ignore) == 1.0)
    assert torch.all(boundary_scores(hypotheses, reference, None, labels_ignore) < 1.0)
    regions = torch.zeros(2, 2, 12, 12, dtype=torch.bool)
    regions[:, 0, 2:8, 2:8] = True
    regions[:, 1, 3:6, 3:6] = True
    shifted = torch.roll(regions, 3, dims=-1)
    scores = boundary_scores(torch.stack([regions, shifted], 1), regions, None, REGIONS)
    assert scores.shape == (2, 2) and torch.all(scores[:, 0] == 1.0) and torch.all(scores[:, 1] < 1.0)


def test_objective_weights_known_values() -> None:
    margins = torch.tensor([1.0, 1.0, -1.0, -1.0])
    objective = torch.tensor([0, 0, 1, 1])
    weights = objective_weights(margins, objective, 2)
    # s = 1, mu = (1, -1): 1 - Phi(1) and 1 - Phi(-1) = Phi(1), normalised (they already sum to 1)
    assert weights.tolist() == pytest.approx([1 - PHI_1, PHI_1], abs=1e-6)
    # a round's first step: policy = reference, every margin 0: equal weights
    assert objective_weights(torch.zeros(4), objective, 2).tolist() == [0.5, 0.5]
    # an objective without pairs in the step gets none of the weight
    assert objective_weights(torch.tensor([0.3, -0.2]), torch.tensor([0, 0]), 2).tolist() == [1.0, 0.0]
    assert objective_weights(torch.tensor([0.7]), torch.tensor([1]), 2).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="num_objectives"):
        objective_weights(margins, objective, 0)
    with pytest.raises(ValueError, match="both be"):
        objective_weights(margins, objective[:3], 2)


def test_combine_objectives_known_value_and_no_gradient_through_the_weights() -> None:
    losses = torch.tensor([1.0, 2.0, 3.0, 5.0], requires_grad=True)
    margins = torch.tensor([1.0, 1.0, -1.0, -1.0], requires_grad=True)
    objective = torch.tensor([0, 0, 1, 1])
    total = combine_objectives(losses, margins, objective, 2)
    assert total.item() == pytest.approx((1 - PHI_1) * 1.5 + PHI_1 * 4.0, abs=1e-6)
    total.backward()
    assert margins.grad is None  # the weights steer, they are not optimised
    assert losses.grad.tolist() == pytest.approx([(1 - PHI_1) / 2] * 2 + [PHI_1 / 2] * 2, abs=1e-6)
    single = combine_objectives(losses.detach(), margins.detach(), torch.zeros(4, dtype=torch.long), 1)
    assert single.item() == pytest.approx(2.75)


def test_combined_loss_moves_the_policy_towards_both_preferred_masks() -> None:
    torch.manual_seed(0)
    chosen = torch.stack([square(5, 5), square(5, 6)]).long()
    rejected = torch.stack([square(5, 8), square(9, 6)]).long()
    objective = torch.tensor([0, 1])
    reference = torch.zeros(2, 2, 20, 20)
    ref_c, ref_r, count = mask_log_likelihoods(reference, chosen, rejected)
    logits = torch.nn.Parameter(reference.clone())
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(20):
        policy_c, policy_r, _ = mask_log_likelihoods(logits, chosen, rejected)
        losses, chosen_rewards, rejected_rewards = dpo_loss(policy_c, policy_r, ref_c, ref_r, count, beta=0.1)
        loss = combine_objectives(losses, chosen_rewards - rejected_rewards, objective, 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy_c, policy_r, _ = mask_log_likelihoods(logits.detach(), chosen, rejected)
    assert torch.all(policy_c - policy_r > ref_c - ref_r + 0.5)  # each pair's preferred mask gained on its rival


def test_a_two_objective_round_tags_each_pair_with_the_objective_that_ranked_it(label_round) -> None:
    network, batches, dice_only = label_round
    both = generate(network, batches, round_index=3, epoch=17, objectives=("dice", "boundary"))
    assert dice_only.objective is None and both.objective is not None
    assert both.objective.dtype == torch.long and set(both.objective.tolist()) <= {0, 1}
    dice_pairs = both.objective == 0
    assert dice_pairs.any() and (~dice_pairs).any()  # both objectives found pairs
    # the Dice objective's pairs are the single-objective round's pairs (same seed, same dropout masks)
    assert torch.equal(both.chosen[dice_pairs], dice_only.chosen)
    assert torch.equal(both.rejected[dice_pairs], dice_only.rejected)
    targets = {key: batch["target"][row : row + 1] for batch in batches for row, key in enumerate(batch["keys"])}
    for index in (~dice_pairs).nonzero()[:, 0].tolist():
        reference, valid = split_target(targets[both.keys[index]], LABELS)
        pair = torch.stack([both.chosen[index], both.rejected[index]])[None]
        scores = boundary_scores(pair, reference, valid, LABELS)[0]
        assert scores[0] >= scores[1] + 0.05 - 1e-6  # y+ beats y- on the boundary score by the margin
    with pytest.raises(ValueError, match="objectives"):
        generate(network, batches, objectives=("boundary", "dice"))  # not a set the settings offer
