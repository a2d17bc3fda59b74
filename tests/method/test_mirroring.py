"""Tests of ``nnunetv2_mapo.method.mirroring``, and of mirrored pairs through the round, the set and the loss."""

from __future__ import annotations

import math

import pytest
import torch
from round_helpers import (
    LABELS,
    LABELS_IGNORE,
    REGIONS,
    clean_logits,
    generate,
    label_batches,
    region_batches,
    tiny_unet,
)

from nnunetv2_mapo.method.mirroring import mirror, mirror_rows, mirror_views, mirrored_logits
from nnunetv2_mapo.method.preference_loss import PreferenceLoss, PreferenceLossConfig, mask_log_likelihoods
from nnunetv2_mapo.method.preference_set import PreferenceSet

pytestmark = pytest.mark.usefixtures("mapo_single_thread")


# ------------------------------------------------------------------------------------------------ views
def test_views_are_every_combination_of_the_axes_identity_first():
    assert mirror_views((0, 1)) == [(), (0,), (1,), (0, 1)]
    assert mirror_views([2, 0, 1]) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_views(None) == [()]
    assert mirror_views(()) == [()]


@pytest.mark.parametrize("axes", [(0, 0), (-1,), (1, 1, 2)])
def test_repeated_or_negative_axes_are_refused(axes):
    with pytest.raises(ValueError, match="distinct spatial axes"):
        mirror_views(axes)


def test_mirror_flips_the_last_spatial_dimensions_of_any_layout():
    labels = torch.tensor([[1, 2, 3], [4, 5, 6]])  # (*patch), 2 spatial dimensions
    assert torch.equal(mirror(labels, (0,), 2), torch.tensor([[4, 5, 6], [1, 2, 3]]))
    assert torch.equal(mirror(labels, (1,), 2), torch.tensor([[3, 2, 1], [6, 5, 4]]))
    assert torch.equal(mirror(labels, (0, 1), 2), torch.tensor([[6, 5, 4], [3, 2, 1]]))
    assert mirror(labels, (), 2) is labels
    image = torch.stack([labels, 10 * labels])  # (C, *patch): the channel axis is not spatial
    assert torch.equal(mirror(image, (1,), 2), torch.stack([mirror(labels, (1,), 2), 10 * mirror(labels, (1,), 2)]))
    volume = torch.arange(24).reshape(1, 2, 3, 4)
    assert torch.equal(mirror(mirror(volume, (0, 2), 3), (0, 2), 3), volume)  # its own inverse


def test_mirror_refuses_axes_beyond_the_spatial_dimensions():
    with pytest.raises(ValueError, match="spatial dimensions"):
        mirror(torch.zeros(4, 4), (2,), 2)
    with pytest.raises(ValueError, match="spatial dimensions"):
        mirror(torch.zeros(4), (0,), 2)


def test_mirror_rows_mirrors_each_row_by_its_own_view():
    rows = torch.arange(12).reshape(3, 2, 2)
    views = mirror_views((0, 1))
    out = mirror_rows(rows, views, torch.tensor([0, 1, 3]), 2)
    assert torch.equal(out[0], rows[0])
    assert torch.equal(out[1], rows[1].flip(0))
    assert torch.equal(out[2], rows[2].flip(0).flip(1))


def test_mirrored_logits_line_up_with_the_unmirrored_input():
    network = tiny_unet().eval()
    data = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(mirrored_logits(network, data, ()), clean_logits(network, data))
        expected = clean_logits(network, data.flip(3)).flip(3)
        assert torch.allclose(mirrored_logits(network, data, (1,)), expected)
        # the network is not mirror-equivariant, so a view's reference differs from the unmirrored one
        assert not torch.allclose(expected, clean_logits(network, data), atol=1e-3)


# ------------------------------------------------------------------------------------------------ the round
def _view_reference(network, result: PreferenceSet, view, valid=None, regions=False):
    """The reference log-likelihoods of the mirrored masks under the network on the mirrored patch, computed
    directly (no use of the permutation identity the round relies on)."""
    images = mirror(result.images.float(), view, 2)
    chosen, rejected = mirror(result.chosen, view, 2), mirror(result.rejected, view, 2)
    valid = None if valid is None else mirror(valid, view, 2)
    return mask_log_likelihoods(clean_logits(network, images), chosen, rejected, valid, regions)[:2]


@pytest.mark.parametrize("kind", ["labels", "ignore", "regions"])
def test_the_round_computes_every_view_reference(kind):
    if kind == "regions":
        network = tiny_unet(num_classes=2)
        batches, labels = region_batches(network), REGIONS
    else:
        network = tiny_unet()
        batches = label_batches(network, ignore=kind == "ignore")
        labels = LABELS_IGNORE if kind == "ignore" else LABELS
    plain = generate(network, batches, label_manager=labels)
    result = generate(network, batches, label_manager=labels, mirror_axes=(1, 0))
    assert len(result) > 0 and result.views == [[], [0], [1], [0, 1]]
    assert result.reference_chosen_logps.shape == (len(result), 4)
    # the same pairs as without mirroring, and the identity column is the unmirrored reference
    assert torch.equal(result.chosen, plain.chosen) and torch.equal(result.rejected, plain.rejected)
    assert torch.allclose(result.reference_chosen_logps[:, 0], plain.reference_chosen_logps)
    for column, view in enumerate(mirror_views((0, 1))):
        ref_c, ref_r = _view_reference(network, result, view, result.valid, kind == "regions")
        assert torch.allclose(result.reference_chosen_logps[:, column], ref_c, atol=1e-4), view
        assert torch.allclose(result.reference_rejected_logps[:, column], ref_r, atol=1e-4), view
    assert not torch.allclose(result.reference_chosen_logps[:, 0], result.reference_chosen_logps[:, 3], atol=1e-3)


def test_a_reference_free_round_stores_zero_references_per_view():
    network = tiny_unet()
    result = generate(network, label_batches(network), reference_pass=False, mirror_axes=(0, 1))
    assert len(result) > 0
    assert torch.equal(result.reference_chosen_logps, torch.zeros(len(result), 4))


def test_no_mirror_axes_keeps_the_unmirrored_set():
    network = tiny_unet()
    result = generate(network, label_batches(network), mirror_axes=())
    assert result.views is None and result.reference_chosen_logps.ndim == 1


# ------------------------------------------------------------------------------------------------ training steps
def test_sampled_mirrored_pairs_sit_exactly_at_the_reference():
    """The policy equal to the reference gives every mirrored pair a margin of 0 (DPO loss ln 2): the view's
    reference log-likelihoods belong to the mirrored patch and masks the step trains on."""
    network = tiny_unet()
    result = generate(network, label_batches(network, ignore=True), label_manager=LABELS_IGNORE, mirror_axes=(0, 1))
    generator = torch.Generator().manual_seed(0)
    loss = PreferenceLoss(PreferenceLossConfig("sigmoid", 0.1))
    seen_mirrored = False
    for _ in range(6):
        batch = result.sample(len(result), generator)
        seen_mirrored |= not torch.equal(batch.reference_chosen_logps.sort().values,
                                         result.reference_chosen_logps[:, 0].sort().values)
        losses, chosen_rewards, rejected_rewards, _ = loss(
            clean_logits(network, batch.images), batch.chosen, batch.rejected, batch.reference_chosen_logps,
            batch.reference_rejected_logps, batch.valid)
        assert torch.allclose(chosen_rewards, torch.zeros_like(chosen_rewards), atol=1e-4)
        assert torch.allclose(rejected_rewards, torch.zeros_like(rejected_rewards), atol=1e-4)
        assert torch.allclose(losses, torch.full_like(losses, math.log(2)), atol=1e-4)
    assert seen_mirrored  # the draws did use mirrored views


def test_a_mirrored_pair_keeps_the_unmirrored_reference_wrong():
    """Guard of the test above: pairs mirrored without their view's reference are not at margin 0."""
    network = tiny_unet()
    result = generate(network, label_batches(network), mirror_axes=(0, 1))
    images = mirror(result.images.float(), (0, 1), 2)
    chosen, rejected = mirror(result.chosen, (0, 1), 2), mirror(result.rejected, (0, 1), 2)
    _, chosen_rewards, _, _ = PreferenceLoss(PreferenceLossConfig("sigmoid", 0.1))(
        clean_logits(network, images), chosen, rejected, result.reference_chosen_logps[:, 0],
        result.reference_rejected_logps[:, 0])
    assert chosen_rewards.abs().max() > 1e-3
