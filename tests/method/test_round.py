"""Tests of ``nnunetv2_mapo.method.round``: generation with a real nnU-Net U-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from round_helpers import (
    CPU,
    LABELS,
    LABELS_IGNORE,
    REGIONS,
    K,
    clean_logits,
    generate,
    label_batches,
    region_batches,
    tiny_unet,
)

from nnunetv2_mapo.method.dropout import inject_dropout
from nnunetv2_mapo.method.objectives import boundary_scores
from nnunetv2_mapo.method.preference_loss import mask_log_likelihoods
from nnunetv2_mapo.method.round import RoundExamples, generate_preference_set
from nnunetv2_mapo.method.scoring import mean_foreground_dice, split_target

pytestmark = pytest.mark.usefixtures("mapo_single_thread")


# ------------------------------------------------------------------------------------------------ generation
def test_generation_finds_pairs_with_the_required_gap(label_round):
    _, batches, result = label_round
    assert len(result) > 0
    assert result.num_items == 6
    assert (result.round_index, result.epoch) == (3, 17)
    assert (result.chosen_dice - result.rejected_dice >= 0.05 - 1e-6).all()
    assert result.mean_dice_gap == pytest.approx(float((result.chosen_dice - result.rejected_dice).mean()))
    differ = (result.chosen != result.rejected).flatten(1).any(1)
    assert differ.all()
    assert result.chosen.dtype == torch.uint8 and result.chosen.shape == (len(result), 16, 16)
    assert result.valid is None
    all_keys = [k for b in batches for k in b["keys"]]
    assert result.keys == [k for k in all_keys if k in result.keys]  # in data order, no duplicates
    assert len(set(result.keys)) == len(result)


def test_stored_dice_and_images_match_the_inputs(label_round):
    _, batches, result = label_round
    data = torch.cat([b["data"] for b in batches])
    target = torch.cat([b["target"] for b in batches])
    index = [int(k.split("_")[1]) for k in result.keys]
    assert result.images.dtype == torch.float16
    assert torch.equal(result.images, data[index].half())
    reference, valid = split_target(target[index], LABELS)
    masks = torch.stack([result.chosen, result.rejected], 1)
    scores = mean_foreground_dice(masks, reference, valid, LABELS)
    assert torch.allclose(scores[:, 0], result.chosen_dice, atol=1e-6)
    assert torch.allclose(scores[:, 1], result.rejected_dice, atol=1e-6)


def test_network_dice_is_that_of_the_prediction_without_dropout(label_round):
    network, batches, result = label_round
    target = torch.cat([b["target"] for b in batches])
    index = [int(k.split("_")[1]) for k in result.keys]
    reference, valid = split_target(target[index], LABELS)
    own = clean_logits(network, result.images.float()).argmax(1)
    expected = mean_foreground_dice(own[:, None], reference, valid, LABELS)[:, 0]
    assert torch.allclose(result.network_dice, expected, atol=1e-6)
    # The targets are the network's own prediction: no dropout hypothesis can beat it.
    assert (result.network_dice >= result.chosen_dice - 1e-6).all()
    assert result.chosen_beats_network == 0.0


def test_reference_logps_are_those_of_the_eval_network(label_round):
    network, batches, result = label_round
    logits = clean_logits(network, result.images.float())
    ref_c, ref_r, num_disagree = mask_log_likelihoods(logits, result.chosen, result.rejected)
    assert torch.allclose(result.reference_chosen_logps, ref_c, atol=1e-4)
    assert torch.allclose(result.reference_rejected_logps, ref_r, atol=1e-4)
    assert (num_disagree > 0).all()
    assert (result.reference_chosen_logps <= 0).all() and (result.reference_rejected_logps <= 0).all()


def test_chosen_mask_is_more_likely_than_rejected_under_the_reference(label_round):
    # y+ is close to the clean prediction, y- is the noisiest hypothesis: the clean network prefers y+.
    _, _, result = label_round
    assert (result.reference_chosen_logps > result.reference_rejected_logps).float().mean() > 0.5


@pytest.mark.parametrize("training", [True, False])
def test_network_mode_and_injector_are_restored(training):
    network = tiny_unet()
    batches = label_batches(network)
    network.train(training)
    generate(network, batches)
    assert network.training is training
    assert all(m.training is training for m in network.modules())
    assert not inject_dropout(network).active


def test_network_mode_is_restored_when_a_batch_fails():
    network = tiny_unet()
    batches = label_batches(network)
    network.train()

    def failing():
        yield batches[0]
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        generate(network, failing())
    assert network.training
    assert not inject_dropout(network).active


def test_batchnorm_statistics_untouched():
    network = tiny_unet(norm="batch")
    network.train()
    with torch.no_grad():
        network(torch.randn(4, 1, 16, 16) * 2 + 1)  # non-trivial running statistics
    batches = label_batches(network)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    result = generate(network, batches)
    assert len(result) > 0
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_margin_one_gives_an_empty_set():
    network = tiny_unet()
    result = generate(network, label_batches(network), margin=1.0, round_index=2, epoch=5)
    assert len(result) == 0
    assert result.num_items == 6
    assert (result.round_index, result.epoch) == (2, 5)
    assert math.isnan(result.mean_dice_gap)
    assert result.keys == []
    with pytest.raises(ValueError, match="empty preference set"):
        result.sample(2, torch.Generator())


def test_no_batches_gives_an_empty_set():
    network = tiny_unet()
    result = generate(network, [])
    assert len(result) == 0 and result.num_items == 0


def test_generation_is_reproducible_with_a_seeded_generator():
    network = tiny_unet()
    batches = label_batches(network)
    first, again = generate(network, batches, seed=4), generate(network, batches, seed=4)
    other = generate(network, batches, seed=5)
    assert first.keys == again.keys
    assert torch.equal(first.chosen, again.chosen) and torch.equal(first.rejected, again.rejected)
    assert torch.equal(first.reference_chosen_logps, again.reference_chosen_logps)
    assert not (torch.equal(first.rejected, other.rejected) and first.keys == other.keys)


@pytest.mark.parametrize("items_per_forward", [1, 3, 100, 0])
def test_items_per_forward_does_not_change_the_items(items_per_forward):
    network = tiny_unet()
    result = generate(network, label_batches(network), items_per_forward=items_per_forward)
    assert result.num_items == 6
    assert len(result) > 0
    assert (result.chosen_dice - result.rejected_dice >= 0.05 - 1e-6).all()


@pytest.mark.parametrize("items_per_forward", [1, 3])
def test_every_item_gets_every_rate(items_per_forward):
    # Rate 0 among the K rates reproduces the clean prediction, which is the target here: every item's y+ must be
    # that hypothesis (Dice 1), whatever its position in the batched forward pass.
    network = tiny_unet()
    batches = label_batches(network)
    result = generate_preference_set(network, inject_dropout(network), batches, LABELS, 4, (0.0, 0.2, 0.4, 0.6),
                                     0.05, items_per_forward, CPU, torch.Generator().manual_seed(0))
    assert len(result) > 0
    assert (result.chosen_dice == 1.0).all()
    target = torch.cat([b["target"] for b in batches])[:, 0]
    index = [int(k.split("_")[1]) for k in result.keys]
    assert torch.equal(result.chosen.long(), target[index].long())


def test_identical_hypotheses_give_no_pair_even_with_margin_zero():
    network = tiny_unet()
    result = generate_preference_set(network, inject_dropout(network), label_batches(network), LABELS, 3, (0.0,),
                                     0.0, 2, CPU)
    assert len(result) == 0  # every pair would have no disagreement voxel
    assert result.num_items == 6


def test_plain_tensor_output_network():
    network = tiny_unet(deep_supervision=False)
    result = generate(network, label_batches(network))
    assert len(result) > 0
    assert result.chosen.shape[1:] == (16, 16)


def test_generation_with_ignore_label():
    network = tiny_unet()
    batches = label_batches(network, ignore=True)
    result = generate(network, batches, label_manager=LABELS_IGNORE)
    assert len(result) > 0
    assert result.valid is not None and result.valid.dtype == torch.bool
    assert result.valid.shape == (len(result), 1, 16, 16)
    assert not result.valid[:, :, 12:].any() and result.valid[:, :, :12].all()
    ref_c, ref_r, _ = mask_log_likelihoods(clean_logits(network, result.images.float()), result.chosen, result.rejected,
                                           result.valid)
    assert torch.allclose(result.reference_chosen_logps, ref_c, atol=1e-4)
    assert torch.allclose(result.reference_rejected_logps, ref_r, atol=1e-4)
    # the ignored band does not count: a set scored without ignore would include it
    unmasked = mask_log_likelihoods(clean_logits(network, result.images.float()), result.chosen, result.rejected)
    assert not torch.allclose(unmasked[0], ref_c) or not torch.allclose(unmasked[1], ref_r)


def test_generation_with_regions():
    network = tiny_unet(num_classes=2)
    result = generate(network, region_batches(network), label_manager=REGIONS)
    assert len(result) > 0
    assert result.chosen.dtype == torch.bool and result.chosen.shape == (len(result), 2, 16, 16)
    assert (result.chosen_dice - result.rejected_dice >= 0.05 - 1e-6).all()
    ref_c, ref_r, _ = mask_log_likelihoods(clean_logits(network, result.images.float()), result.chosen, result.rejected,
                                           regions=True)
    assert torch.allclose(result.reference_chosen_logps, ref_c, atol=1e-4)
    assert torch.allclose(result.reference_rejected_logps, ref_r, atol=1e-4)


def test_numpy_keys_become_plain_strings():
    network = tiny_unet()
    batches = label_batches(network)
    for batch in batches:
        batch["keys"] = np.array(batch["keys"])  # nnU-Net's loaders may hand out numpy strings
    result = generate(network, batches)
    assert len(result) > 0
    assert all(type(k) is str for k in result.keys)


def test_examples_are_the_first_items_with_a_pair_and_match_the_set(label_round):
    network, batches, result = label_round
    examples = RoundExamples(limit=3)
    again = generate(network, batches, round_index=3, epoch=17, examples=examples)
    assert torch.equal(again.chosen, result.chosen)  # collecting examples changes nothing
    assert [e["key"] for e in examples.items] == result.keys[:3]
    for index, example in enumerate(examples.items):
        assert torch.equal(example["chosen"], result.chosen[index])
        assert torch.equal(example["rejected"], result.rejected[index])
        assert example["dice_chosen"] == pytest.approx(float(result.chosen_dice[index]))
        assert example["dice_network"] == pytest.approx(float(result.network_dice[index]))
        batch_index, row = divmod(int(example["key"].split("_")[1]), 3)  # label_batches: 3 items per batch
        assert torch.equal(example["reference"], batches[batch_index]["target"][row, 0].long())
    assert RoundExamples(limit=0).wanted == 0


def test_a_reference_free_round_skips_the_reference_pass(label_round):
    network, batches, result = label_round
    calls = []
    handle = network.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        free = generate(network, batches, round_index=3, epoch=17, reference_pass=False)
    finally:
        handle.remove()
    assert all(rows % K == 0 for rows in calls)  # only the K-hypothesis passes, no pass of the items themselves
    assert torch.equal(free.chosen, result.chosen) and torch.equal(free.rejected, result.rejected)  # same pairs
    assert torch.all(free.reference_chosen_logps == 0) and torch.isnan(free.network_dice).all()


def test_ground_truth_pairing_prefers_the_ground_truth_over_the_worst_hypothesis(label_round):
    network, batches, paper = label_round
    anchored = generate(network, batches, round_index=3, epoch=17, pairing="ground_truth")
    assert len(anchored) > 0 and torch.all(anchored.chosen_dice == 1.0)
    targets = {key: batch["target"][row, 0].long() for batch in batches for row, key in enumerate(batch["keys"])}
    for index, key in enumerate(anchored.keys):
        assert torch.equal(anchored.chosen[index].long(), targets[key])  # y+ is the case's ground truth
    assert anchored.chosen.dtype == paper.chosen.dtype
    assert (anchored.rejected_dice <= 1.0 - 0.05 + 1e-6).all()
    # y- is the worst of the same K hypotheses (same seed: the same dropout masks as the paper's round)
    shared = [key for key in anchored.keys if key in paper.keys]
    assert shared
    for key in shared:
        assert torch.equal(anchored.rejected[anchored.keys.index(key)], paper.rejected[paper.keys.index(key)])
    ref_c, ref_r, _ = mask_log_likelihoods(clean_logits(network, anchored.images.float()), anchored.chosen,
                                           anchored.rejected)
    torch.testing.assert_close(anchored.reference_chosen_logps, ref_c, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(anchored.reference_rejected_logps, ref_r, atol=1e-4, rtol=1e-5)


def test_ground_truth_pairing_with_ignore_label_and_regions():
    network = tiny_unet()
    batches = label_batches(network, ignore=True)
    anchored = generate(network, batches, label_manager=LABELS_IGNORE, pairing="ground_truth")
    assert len(anchored) > 0 and int(anchored.chosen.max()) < 3  # the ignore label never becomes a preferred label
    region_network = tiny_unet(num_classes=2)
    regions = generate(region_network, region_batches(region_network), label_manager=REGIONS, pairing="ground_truth")
    assert len(regions) > 0 and regions.chosen.dtype == torch.bool


def test_an_unknown_pairing_is_refused(label_round):
    network, batches, _ = label_round
    with pytest.raises(ValueError, match="allowed values"):
        generate(network, batches, pairing="best_of_k")


def test_ground_truth_over_prediction_pairs_the_target_with_the_network_own_answer():
    network = tiny_unet()
    batches = label_batches(network)  # targets = the clean prediction: no pair, unless changed
    batches[0]["target"][:, :, :5, :] = 1  # the first batch's targets now differ from the prediction
    rows = []
    handle = network.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    try:
        pairs = generate(network, batches, pairing="ground_truth_over_prediction")
    finally:
        handle.remove()
    assert max(rows) <= 2  # items_per_forward items per pass: no K-fold dropout passes at all
    assert sorted(pairs.keys) == sorted(batches[0]["keys"])  # the unchanged cases are segmented exactly: no pair
    own = clean_logits(network, pairs.images.float()).argmax(1)
    targets = {key: batches[0]["target"][row, 0].long() for row, key in enumerate(batches[0]["keys"])}
    for index, key in enumerate(pairs.keys):
        assert torch.equal(pairs.chosen[index].long(), targets[key])  # y+ the ground truth
        assert torch.equal(pairs.rejected[index].long(), own[index])  # y- what the network predicts
    assert torch.all(pairs.chosen_dice == 1.0)
    torch.testing.assert_close(pairs.rejected_dice, pairs.network_dice)
    assert (pairs.rejected_dice <= 1.0 - 0.05 + 1e-6).all()
    ref_c, ref_r, _ = mask_log_likelihoods(clean_logits(network, pairs.images.float()), pairs.chosen, pairs.rejected)
    torch.testing.assert_close(pairs.reference_chosen_logps, ref_c, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(pairs.reference_rejected_logps, ref_r, atol=1e-4, rtol=1e-5)
    # Reference-free (SimPO): the prediction is still computed, for y-, but no reference log-likelihoods are kept.
    free = generate(network, batches, pairing="ground_truth_over_prediction", reference_pass=False)
    assert torch.equal(free.rejected, pairs.rejected) and torch.all(free.reference_chosen_logps == 0)
    assert torch.isfinite(free.network_dice).all()


def test_ground_truth_over_prediction_takes_one_objective():
    network = tiny_unet()
    with pytest.raises(ValueError, match="one objective"):
        generate(network, label_batches(network), pairing="ground_truth_over_prediction",
                 objectives=("dice", "boundary"))


def test_dropout_and_prediction_ranks_the_networks_own_answer_among_the_candidates():
    network = tiny_unet()
    batches = label_batches(network)  # targets = the clean prediction: it scores 1 and must be y+ by either measure
    for objectives in (("dice",), ("boundary",)):
        pairs = generate(network, batches, pairing="dropout_and_prediction", objectives=objectives, margin=0.0)
        assert len(pairs) > 0
        own = clean_logits(network, pairs.images.float()).argmax(1)
        assert torch.equal(pairs.chosen.long(), own)  # no dropout hypothesis beats the prediction itself
        torch.testing.assert_close(pairs.chosen_dice, pairs.network_dice)
        assert pairs.objective is None  # one objective: no tags
    # The paper's pairing on the same items never prefers the exact prediction over all hypotheses by construction.
    plain = generate(network, batches, pairing="dropout", margin=0.0)
    assert not torch.equal(plain.chosen.long(), clean_logits(network, plain.images.float()).argmax(1))


def test_boundary_ranking_picks_y_plus_and_y_minus_by_the_surface_dice():
    network = tiny_unet()
    batches = label_batches(network)
    batches[0]["target"][:, :, :5, :] = 1  # a target the network does not reproduce: the candidates differ
    pairs = generate(network, batches, pairing="dropout_and_prediction", objectives=("boundary",), margin=0.05)
    assert len(pairs) > 0
    target = {key: batch["target"][row] for batch in batches for row, key in enumerate(batch["keys"])}
    reference, valid = split_target(torch.stack([target[key] for key in pairs.keys]), LABELS)
    scores = boundary_scores(torch.stack([pairs.chosen, pairs.rejected], 1), reference, valid, LABELS)
    assert (scores[:, 0] >= scores[:, 1] + 0.05 - 1e-6).all()  # the gap is in the boundary score, not in Dice


def test_a_fixed_reference_network_gives_the_reference_log_likelihoods_and_nothing_else():
    network = tiny_unet()
    batches = label_batches(network)
    reference = tiny_unet()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # another network: other log-likelihoods
    reference.eval()
    own = generate(network, batches)
    fixed = generate(network, batches, reference_network=reference)
    assert torch.equal(fixed.chosen, own.chosen) and torch.equal(fixed.rejected, own.rejected)  # same pairs
    torch.testing.assert_close(fixed.network_dice, own.network_dice)  # the diagnostic stays the policy's
    ref_c, ref_r, _ = mask_log_likelihoods(clean_logits(reference, fixed.images.float()), fixed.chosen, fixed.rejected)
    torch.testing.assert_close(fixed.reference_chosen_logps, ref_c, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fixed.reference_rejected_logps, ref_r, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(fixed.reference_chosen_logps, own.reference_chosen_logps, atol=1e-3)
    mirrored = generate(network, batches, reference_network=reference, mirror_axes=(0, 1))
    torch.testing.assert_close(mirrored.reference_chosen_logps[:, 0], ref_c, atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------------------ unlabeled patches
def _unlabeled(batches: list[dict], fill: float = 0.0) -> list[dict]:
    return [{**batch, "target": torch.full_like(batch["target"], fill)} for batch in batches]


def test_a_label_free_round_ignores_the_targets_and_prefers_the_consensus():
    network = tiny_unet()
    batches = label_batches(network, count=8, per_batch=4)
    free = generate(network, _unlabeled(batches), pairing="ground_truth", label_free_confidence=0.5)
    assert len(free) > 0
    # other targets (labels everywhere) give exactly the same pairs: nothing of the target is used
    other = generate(network, _unlabeled(batches, fill=2.0), pairing="ground_truth", label_free_confidence=0.5)
    assert free.keys == other.keys and torch.equal(free.chosen, other.chosen)
    # y+ is never the zero target; it scores 1 against itself, and y- at least tau below it
    assert all(bool(c.any()) for c in free.chosen)
    assert torch.all(free.chosen_dice == 1.0) and (free.rejected_dice <= 0.95 + 1e-6).all()
    # the stored network Dice is the prediction's agreement with the consensus (the prediction votes)
    assert ((free.network_dice > 0.5) & (free.network_dice <= 1.0)).all()


def test_a_stricter_confidence_gate_keeps_fewer_unlabeled_pairs():
    network = tiny_unet()
    batches = _unlabeled(label_batches(network, count=8, per_batch=4))
    counts = [len(generate(network, batches, pairing="ground_truth", label_free_confidence=c))
              for c in (0.5, 0.8, 1.0)]
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2]


def test_a_label_free_round_with_regions_gives_region_masks():
    network = tiny_unet(num_classes=2)
    free = generate(network, _unlabeled(region_batches(network)), label_manager=REGIONS, pairing="ground_truth",
                    label_free_confidence=0.5)
    assert len(free) > 0 and free.chosen.dtype == torch.bool and free.chosen.shape[1] == 2


@pytest.mark.parametrize("arguments", [{"pairing": "dropout"}, {"pairing": "ground_truth", "reference_pass": False}])
def test_a_label_free_round_needs_the_consensus_pairing_and_the_reference_pass(label_round, arguments):
    network, batches, _ = label_round
    with pytest.raises(ValueError, match="label_free_confidence needs pairing 'ground_truth'"):
        generate(network, batches, label_free_confidence=0.9, **arguments)
