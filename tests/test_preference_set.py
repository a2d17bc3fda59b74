"""Tests of ``nnunetv2_mapo.preference_set``: generation with a real nnU-Net U-Net, saved state, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import nn

from nnunetv2_mapo.dpo import mask_log_likelihoods
from nnunetv2_mapo.dropout import inject_dropout
from nnunetv2_mapo.preference_set import (
    STATE_VERSION,
    PreferenceBatch,
    PreferenceSet,
    empty_preference_set,
    generate_preference_set,
    hypothesis_rates,
    pairs_for_step,
)
from nnunetv2_mapo.scoring import mean_foreground_dice, split_target

pytestmark = pytest.mark.usefixtures("mapo_single_thread")

LABELS = LabelManager({"background": 0, "a": 1, "b": 2}, regions_class_order=None)
LABELS_IGNORE = LabelManager({"background": 0, "a": 1, "b": 2, "ignore": 3}, regions_class_order=None)
REGIONS = LabelManager({"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
CPU = torch.device("cpu")
RATES = (0.1, 0.3, 0.5)
K = 4


def tiny_unet(num_classes: int = 3, norm: str = "instance", deep_supervision: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm_op = nn.InstanceNorm2d if norm == "instance" else nn.BatchNorm2d
    network = PlainConvUNet(
        input_channels=1, n_stages=2, features_per_stage=(4, 8), conv_op=nn.Conv2d, kernel_sizes=3, strides=(1, 2),
        n_conv_per_stage=1, num_classes=num_classes, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=norm_op,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    inject_dropout(network)
    return network


def clean_logits(network: nn.Module, data: torch.Tensor) -> torch.Tensor:
    was_training = network.training
    network.eval()
    with torch.no_grad():
        out = network(data)
    network.train(was_training)
    return out[0] if isinstance(out, (list, tuple)) else out


def label_batches(network: nn.Module, ignore: bool = False, count: int = 6, per_batch: int = 3, seed: int = 0):
    """Synthetic batches whose targets are the clean network's own prediction (high Dice, dropout lowers it)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(count, 1, 16, 16, generator=generator) * 3
    target = clean_logits(network, data).argmax(1, keepdim=True).float()
    if ignore:
        target[:, :, 12:, :] = 3  # the ignore label over a band
    keys = [f"case_{i}" for i in range(count)]
    return [{"data": data[s:s + per_batch], "target": target[s:s + per_batch], "keys": keys[s:s + per_batch]}
            for s in range(0, count, per_batch)]


def region_batches(network: nn.Module, count: int = 4):
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(count, 1, 16, 16, generator=generator) * 3
    logits = clean_logits(network, data)
    seg = (logits[:, 0] > 0).long() + ((logits[:, 0] > 0) & (logits[:, 1] > 0)).long()  # labels 0, 1, 2
    transform = ConvertSegmentationToRegionsTransform(regions=list(REGIONS.foreground_regions), channel_in_seg=0)
    target = torch.stack([transform(segmentation=s[None])["segmentation"] for s in seg])
    return [{"data": data, "target": target, "keys": [f"r{i}" for i in range(count)]}]


def generate(network, batches, label_manager=LABELS, margin=0.05, items_per_forward=2, seed=0, **kwargs):
    return generate_preference_set(network, inject_dropout(network), batches, label_manager, K, RATES, margin,
                                   items_per_forward, CPU, torch.Generator().manual_seed(seed), **kwargs)


@pytest.fixture(scope="module")
def label_round():
    network = tiny_unet()
    batches = label_batches(network)
    result = generate(network, batches, round_index=3, epoch=17)
    return network, batches, result


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


def test_chosen_beats_network_counts_pairs_and_skips_unknown_values():
    preference_set = synthetic_set(4)
    preference_set.network_dice = torch.tensor([0.95, 0.85, 0.85, 0.9])  # y+ scores 0.9 everywhere
    assert preference_set.chosen_beats_network == 0.5  # ties do not count as better
    preference_set.network_dice = torch.tensor([math.nan, 0.95, 0.85, math.nan])
    assert preference_set.chosen_beats_network == 0.5
    preference_set.network_dice = torch.full((4,), math.nan)
    assert math.isnan(preference_set.chosen_beats_network)
    assert math.isnan(empty_preference_set().chosen_beats_network)


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


# ------------------------------------------------------------------------------------------------ state
def roundtrip(preference_set: PreferenceSet, tmp_path) -> PreferenceSet:
    path = tmp_path / "set.pt"
    torch.save(preference_set.state_dict(), path)
    return PreferenceSet.from_state_dict(torch.load(path, weights_only=True))


def assert_same_set(a: PreferenceSet, b: PreferenceSet) -> None:
    for name in ("images", "chosen", "rejected", "reference_chosen_logps", "reference_rejected_logps",
                 "chosen_dice", "rejected_dice", "network_dice"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y) or torch.allclose(x, y, atol=0, rtol=0, equal_nan=True), name
    assert (a.valid is None) == (b.valid is None)
    if a.valid is not None:
        assert torch.equal(a.valid, b.valid)
    assert (a.keys, a.round_index, a.epoch, a.num_items) == (b.keys, b.round_index, b.epoch, b.num_items)


def test_state_roundtrip_through_weights_only_load(label_round, tmp_path):
    _, _, result = label_round
    state = result.state_dict()
    assert state["version"] == STATE_VERSION
    restored = roundtrip(result, tmp_path)
    assert_same_set(result, restored)
    state["keys"].append("mutated")
    assert "mutated" not in result.keys  # the state holds a copy of the keys


def test_state_roundtrip_with_valid_mask(tmp_path):
    network = tiny_unet()
    result = generate(network, label_batches(network, ignore=True), label_manager=LABELS_IGNORE)
    assert_same_set(result, roundtrip(result, tmp_path))


@pytest.mark.parametrize("has_ignore", [False, True])
def test_state_roundtrip_of_an_empty_set(tmp_path, has_ignore):
    empty = empty_preference_set(round_index=1, epoch=9, num_items=4, has_ignore=has_ignore)
    restored = roundtrip(empty, tmp_path)
    assert_same_set(empty, restored)
    assert len(restored) == 0


def test_version_1_states_load_without_network_dice(label_round):
    _, _, result = label_round
    state = result.state_dict()
    del state["network_dice"]
    state["version"] = 1
    restored = PreferenceSet.from_state_dict(state)
    assert restored.network_dice.shape == result.chosen_dice.shape
    assert torch.isnan(restored.network_dice).all()
    assert torch.equal(restored.chosen_dice, result.chosen_dice)
    assert math.isnan(restored.chosen_beats_network)


def corrupt_states(state: dict) -> list[tuple[str, dict]]:
    return [
        ("version", state | {"version": STATE_VERSION + 1}),
        ("version", {k: v for k, v in state.items() if k != "version"}),
        ("lacks", {k: v for k, v in state.items() if k != "chosen_dice"}),
        ("lacks", {k: v for k, v in state.items() if k != "network_dice"}),
        ("different numbers", state | {"chosen": state["chosen"][:-1]}),
        ("different numbers", state | {"reference_rejected_logps": state["reference_rejected_logps"][:-1]}),
        ("different numbers", state | {"keys": state["keys"][:-1]}),
        ("different numbers", state | {"network_dice": state["network_dice"][:-1]}),
        ("differ in shape", state | {"rejected": state["rejected"][:, :8]}),
        ("wrong type", state | {"images": None}),
        ("wrong type", state | {"chosen_dice": [0.5] * len(state["keys"])}),
        ("wrong type", state | {"chosen": torch.tensor(1)}),
        ("wrong type", state | {"keys": 5}),
        ("wrong type", state | {"keys": [1] * len(state["keys"])}),
        ("wrong type", state | {"valid": "all"}),
        ("wrong type", state | {"epoch": "3"}),
    ]


def test_corrupt_or_inconsistent_states_raise_value_error(label_round):
    _, _, result = label_round
    assert len(result) >= 2
    for match, state in corrupt_states(result.state_dict()):
        with pytest.raises(ValueError, match=match):
            PreferenceSet.from_state_dict(state)


@pytest.mark.parametrize("state", [None, [], "state", 3])
def test_non_dict_states_raise_value_error(state):
    with pytest.raises(ValueError, match="Unsupported preference-set state"):
        PreferenceSet.from_state_dict(state)


def test_valid_with_wrong_count_is_inconsistent(tmp_path):
    network = tiny_unet()
    result = generate(network, label_batches(network, ignore=True), label_manager=LABELS_IGNORE)
    state = result.state_dict()
    state["valid"] = state["valid"][:-1]
    with pytest.raises(ValueError, match="different numbers"):
        PreferenceSet.from_state_dict(state)


# ------------------------------------------------------------------------------------------------ sampling
def synthetic_set(count: int = 5, with_valid: bool = False, offset: int = 0) -> PreferenceSet:
    images = torch.arange(count, dtype=torch.float16).reshape(count, 1, 1, 1).expand(count, 1, 4, 4) + offset
    chosen = torch.arange(count, dtype=torch.uint8).reshape(count, 1, 1).expand(count, 4, 4) + offset
    return PreferenceSet(
        images=images.clone(), chosen=chosen.clone(), rejected=(chosen + 1).clone(),
        valid=torch.ones(count, 1, 4, 4, dtype=torch.bool) if with_valid else None,
        reference_chosen_logps=-torch.arange(count, dtype=torch.float32) - offset,
        reference_rejected_logps=-2 * torch.arange(count, dtype=torch.float32) - offset,
        chosen_dice=torch.full((count,), 0.9), rejected_dice=torch.full((count,), 0.5),
        network_dice=torch.full((count,), 0.8), keys=[f"k{i + offset}" for i in range(count)], round_index=1,
        epoch=10, num_items=count + 2,
    )


def rows_of(batch: PreferenceBatch) -> list[int]:
    return [int(v) for v in batch.images[:, 0, 0, 0]]


def test_sample_rows_stay_aligned():
    preference_set = synthetic_set(6, with_valid=True)
    batch = preference_set.sample(4, torch.Generator().manual_seed(0))
    assert len(batch) == 4
    assert batch.images.dtype == torch.float32 and batch.images.shape == (4, 1, 4, 4)
    rows = rows_of(batch)
    assert len(set(rows)) == 4  # without replacement when the set is large enough
    for i, row in enumerate(rows):
        assert (batch.chosen[i] == row).all() and (batch.rejected[i] == row + 1).all()
        assert batch.reference_chosen_logps[i].item() == -row
        assert batch.reference_rejected_logps[i].item() == -2 * row
    assert batch.valid.shape == (4, 1, 4, 4)


def test_sample_with_replacement_when_the_set_is_small():
    batch = synthetic_set(2).sample(7, torch.Generator().manual_seed(0))
    assert len(batch) == 7
    assert set(rows_of(batch)) <= {0, 1}
    assert batch.valid is None


def test_sample_all_is_a_permutation():
    batch = synthetic_set(5).sample(5, torch.Generator().manual_seed(3))
    assert sorted(rows_of(batch)) == [0, 1, 2, 3, 4]


def test_sample_is_reproducible_and_seed_dependent():
    preference_set = synthetic_set(20)
    a = rows_of(preference_set.sample(5, torch.Generator().manual_seed(1)))
    b = rows_of(preference_set.sample(5, torch.Generator().manual_seed(1)))
    c = rows_of(preference_set.sample(5, torch.Generator().manual_seed(2)))
    assert a == b and a != c
    generator = torch.Generator().manual_seed(1)
    assert rows_of(preference_set.sample(5, generator)) != rows_of(preference_set.sample(5, generator))


def test_sample_covers_the_set():
    generator = torch.Generator().manual_seed(0)
    preference_set = synthetic_set(8)
    seen = {r for _ in range(30) for r in rows_of(preference_set.sample(2, generator))}
    assert seen == set(range(8))


def test_preference_batch_to_and_len():
    batch = synthetic_set(3, with_valid=True).sample(2, torch.Generator().manual_seed(0))
    moved = batch.to(CPU)
    assert len(moved) == 2
    assert torch.equal(moved.chosen, batch.chosen) and torch.equal(moved.valid, batch.valid)
    no_valid = synthetic_set(3).sample(2, torch.Generator().manual_seed(0)).to(CPU)
    assert no_valid.valid is None


# ------------------------------------------------------------------------------------------------ concatenate
def test_concatenate_joins_parts_in_order():
    a, b = synthetic_set(2, offset=0), synthetic_set(3, offset=10)
    joined = PreferenceSet.concatenate([a, b])
    assert len(joined) == 5
    assert joined.keys == ["k0", "k1", "k10", "k11", "k12"]
    assert joined.num_items == a.num_items + b.num_items
    assert torch.equal(joined.reference_chosen_logps, torch.cat([a.reference_chosen_logps, b.reference_chosen_logps]))
    assert joined.valid is None
    assert (joined.round_index, joined.epoch) == (1, 10)


def test_concatenate_with_empty_parts():
    empty = empty_preference_set(round_index=1, epoch=10, num_items=3)
    a, b = synthetic_set(2), synthetic_set(1, offset=5)
    joined = PreferenceSet.concatenate([empty, a, empty, b])
    assert len(joined) == 3
    assert joined.keys == ["k0", "k1", "k5"]
    assert joined.num_items == 3 + a.num_items + 3 + b.num_items
    assert joined.chosen.shape == (3, 4, 4)


def test_concatenate_with_valid_masks():
    joined = PreferenceSet.concatenate([synthetic_set(2, with_valid=True), empty_preference_set(has_ignore=True),
                                        synthetic_set(2, with_valid=True, offset=4)])
    assert joined.valid.shape == (4, 1, 4, 4)


def test_concatenate_only_empty_parts():
    joined = PreferenceSet.concatenate([empty_preference_set(2, 8, 4), empty_preference_set(2, 8, 5)])
    assert len(joined) == 0
    assert joined.num_items == 9
    assert (joined.round_index, joined.epoch) == (2, 8)


def test_concatenate_single_part_is_unchanged(tmp_path):
    part = synthetic_set(3, with_valid=True)
    assert_same_set(part, PreferenceSet.concatenate([part]))


# ------------------------------------------------------------------------------------------------ rates
def test_hypothesis_rates_one_per_hypothesis():
    rates = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
    assert hypothesis_rates(rates, 8) == list(rates)


def test_hypothesis_rates_spread_evenly():
    assert hypothesis_rates([0.1, 0.2], 4) == [0.1, 0.1, 0.2, 0.2]
    assert hypothesis_rates([0.1, 0.2, 0.3], 6) == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    spread = hypothesis_rates([0.1, 0.2, 0.3], 8)
    assert len(spread) == 8
    assert spread == sorted(spread)
    counts = [spread.count(r) for r in (0.1, 0.2, 0.3)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 8


def test_hypothesis_rates_single_rate_and_fewer_hypotheses():
    assert hypothesis_rates([0.25], 3) == [0.25, 0.25, 0.25]
    fewer = hypothesis_rates([0.1, 0.2, 0.3, 0.4], 2)
    assert len(fewer) == 2 and set(fewer) <= {0.1, 0.2, 0.3, 0.4}
    assert fewer[0] == 0.1
    assert all(type(r) is float for r in hypothesis_rates(np.array([0.1, 0.2]), 3))


# ------------------------------------------------------------------------------------------- pairs per step
@pytest.mark.parametrize("rate", [0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 2.0, 17.125, 0.1, 1 / 3])
def test_pair_counts_average_the_rate_and_alternate_floor_and_ceiling(rate):
    counts = [pairs_for_step(rate, step) for step in range(240)]
    assert counts[0] >= 1  # the first step after a round always trains on a pair
    assert set(counts) <= {math.floor(rate), math.ceil(rate)}
    for n in (1, 7, 80, 240):  # every prefix carries ceil(rate x n): never more than one pair ahead
        assert sum(counts[:n]) == math.ceil(round(rate * n, 9))


def test_pair_counts_of_a_fraction_follow_the_pattern():
    assert [pairs_for_step(0.375, step) for step in range(8)] == [1, 0, 1, 0, 0, 1, 0, 0]
    assert [pairs_for_step(2, step) for step in range(3)] == [2, 2, 2]


@pytest.mark.parametrize(("rate", "step"), [(0, 0), (-1, 0), (float("nan"), 0), (0.5, -1)])
def test_pair_counts_reject_bad_input(rate, step):
    with pytest.raises(ValueError, match="pairs_per_step|step"):
        pairs_for_step(rate, step)
