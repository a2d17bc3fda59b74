"""Tests of ``nnunetv2_mapo.method.preference_set``: saved state, sampling, concatenation."""

from __future__ import annotations

import math

import pytest
import torch
from round_helpers import CPU, LABELS_IGNORE, generate, label_batches, tiny_unet

from nnunetv2_mapo.method.preference_set import STATE_VERSION, PreferenceBatch, PreferenceSet, empty_preference_set

pytestmark = pytest.mark.usefixtures("mapo_single_thread")


def test_chosen_beats_network_counts_pairs_and_skips_unknown_values():
    preference_set = synthetic_set(4)
    preference_set.network_dice = torch.tensor([0.95, 0.85, 0.85, 0.9])  # y+ scores 0.9 everywhere
    assert preference_set.chosen_beats_network == 0.5  # ties do not count as better
    preference_set.network_dice = torch.tensor([math.nan, 0.95, 0.85, math.nan])
    assert preference_set.chosen_beats_network == 0.5
    preference_set.network_dice = torch.full((4,), math.nan)
    assert math.isnan(preference_set.chosen_beats_network)
    assert math.isnan(empty_preference_set().chosen_beats_network)


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


def test_objective_tags_survive_the_state_sampling_and_concatenation(label_round, tmp_path):
    network, batches, single = label_round
    both = generate(network, batches, round_index=3, epoch=17, objectives=("dice", "boundary"))
    restored = roundtrip(both, tmp_path)
    assert torch.equal(restored.objective, both.objective)
    batch = both.sample(len(both), torch.Generator().manual_seed(0))
    index = torch.randperm(len(both), generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.objective, both.objective[index])
    assert single.sample(2, torch.Generator()).objective is None
    joined = PreferenceSet.concatenate([both, empty_preference_set(3, 17, 2), both])
    assert torch.equal(joined.objective, torch.cat([both.objective, both.objective]))
    state = both.state_dict()
    state["version"] = 2  # sets saved before the objectives: every pair is a Dice pair
    del state["objective"]
    assert PreferenceSet.from_state_dict(state).objective is None
    with pytest.raises(ValueError, match="different numbers"):
        PreferenceSet.from_state_dict(both.state_dict() | {"objective": both.objective[:-1]})
    with pytest.raises(ValueError, match="wrong type"):
        PreferenceSet.from_state_dict(both.state_dict() | {"objective": 1})


def test_mirrored_views_survive_the_state_and_concatenation(label_round, tmp_path):
    network, batches, plain = label_round
    mirrored = generate(network, batches, round_index=3, epoch=17, mirror_axes=(0, 1))
    restored = roundtrip(mirrored, tmp_path)
    assert restored.views == [[], [0], [1], [0, 1]]
    assert torch.equal(restored.reference_chosen_logps, mirrored.reference_chosen_logps)
    joined = PreferenceSet.concatenate([mirrored, empty_preference_set(3, 17, 2), mirrored])
    assert joined.views == mirrored.views and joined.reference_rejected_logps.shape == (2 * len(mirrored), 4)
    state = plain.state_dict()
    state["version"] = 3  # sets saved before mirrored views: pairs used as generated
    del state["views"]
    assert PreferenceSet.from_state_dict(state).views is None


def test_reference_columns_must_match_the_views(label_round):
    network, batches, plain = label_round
    mirrored = generate(network, batches, mirror_axes=(0, 1)).state_dict()
    with pytest.raises(ValueError, match="reference log-likelihoods of shape"):
        PreferenceSet.from_state_dict(mirrored | {"views": [[], [0]]})
    with pytest.raises(ValueError, match="reference log-likelihoods of shape"):
        PreferenceSet.from_state_dict(plain.state_dict() | {"views": [[], [0]]})
    with pytest.raises(ValueError, match="reference log-likelihoods of shape"):
        PreferenceSet.from_state_dict(mirrored | {"views": None})
    with pytest.raises(ValueError, match="wrong type"):
        PreferenceSet.from_state_dict(mirrored | {"views": [[], ["0"], [1], [0, 1]]})


def test_sampled_views_move_patch_masks_and_reference_together():
    preference_set = synthetic_set(3, with_valid=True)
    preference_set.images = torch.arange(3 * 16, dtype=torch.float16).reshape(3, 1, 4, 4)
    preference_set.chosen = torch.arange(3 * 16, dtype=torch.uint8).reshape(3, 4, 4)
    preference_set.rejected = preference_set.chosen + 100
    preference_set.valid = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    preference_set.views = [[], [0], [1], [0, 1]]
    # reference of pair i in view v: -(10 i + v), so a drawn reference names its pair and view
    preference_set.reference_chosen_logps = -(10 * torch.arange(3.0)[:, None] + torch.arange(4.0))
    preference_set.reference_rejected_logps = preference_set.reference_chosen_logps - 1000
    batch = preference_set.sample(60, torch.Generator().manual_seed(1))
    seen = set()
    for row in range(len(batch)):
        code = int(-batch.reference_chosen_logps[row])
        pair, view = divmod(code, 10)
        seen.add(view)
        axes = preference_set.views[view]  # spatial axes: dims 1 + a of an image row (1, H, W), a of a mask row

        def flip(tensor: torch.Tensor, first_spatial: int, axes: list[int] = axes) -> torch.Tensor:
            return tensor.flip([first_spatial + a for a in axes]) if axes else tensor

        assert torch.equal(batch.images[row], flip(preference_set.images[pair].float(), 1))
        assert torch.equal(batch.chosen[row], flip(preference_set.chosen[pair], 0))
        assert torch.equal(batch.rejected[row], flip(preference_set.rejected[pair], 0))
        assert torch.equal(batch.valid[row], flip(preference_set.valid[pair], 1))
        assert batch.reference_rejected_logps[row] == batch.reference_chosen_logps[row] - 1000
    assert seen == {0, 1, 2, 3}


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


def test_concatenate_tags_untagged_parts_with_objective_zero():
    tagged = synthetic_set(2)
    tagged.objective = torch.tensor([0, 1])
    joined = PreferenceSet.concatenate([tagged, synthetic_set(3, offset=5)])  # a round's labeled and unlabeled pairs
    assert joined.objective.tolist() == [0, 1, 0, 0, 0]
    assert PreferenceSet.concatenate([synthetic_set(1), synthetic_set(1, offset=3)]).objective is None
