"""Tests of ``nnunetv2_mapo.training.loss``: Dice+CE plus the preference term on the pair rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunetv2_mapo.method.objectives import combine_objectives
from nnunetv2_mapo.method.preference_loss import PreferenceLoss, PreferenceLossConfig, dpo_loss, mask_log_likelihoods
from nnunetv2_mapo.method.preference_set import PreferenceBatch
from nnunetv2_mapo.training.loss import MAPOLoss, append_pair_rows, collate_step_stats, split_pair_rows
from nnunetv2_mapo.training.metrics import STEP_KEYS

pytestmark = pytest.mark.usefixtures("mapo_single_thread")

SCALES = (1, 2, 4)  # full resolution and two deep-supervision outputs
BATCH, PAIRS, CLASSES, SIZE = 3, 2, 3, 16


def nnunet_loss(ignore_label: int | None = None, deep_supervision: bool = True):
    """Built as ``nnUNetTrainer._build_loss`` builds it for label (not region) training without DDP."""
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
    if not deep_supervision:
        return loss
    weights = np.array([1 / (2**i) for i in range(len(SCALES))])
    weights[-1] = 0
    weights = weights / weights.sum()
    return DeepSupervisionWrapper(loss, weights)


def nnunet_region_loss():
    loss = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, [0.6, 0.4, 0.0])


def outputs(rows: int, channels: int = CLASSES, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, channels, SIZE // s, SIZE // s, generator=generator).requires_grad_()
            for s in SCALES]


def targets(rows: int = BATCH, seed: int = 1, max_label: int = CLASSES) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    full = torch.randint(0, max_label, (rows, 1, SIZE, SIZE), generator=generator).float()
    return [full[:, :, ::s, ::s].contiguous() for s in SCALES]


def pairs(count: int = PAIRS, seed: int = 2, valid: bool = False, reference=None) -> PreferenceBatch:
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randint(0, CLASSES, (count, SIZE, SIZE), generator=generator).to(torch.uint8)
    rejected = chosen.clone()
    rejected[:, :6, :6] = (rejected[:, :6, :6] + 1) % CLASSES
    ref_c = -torch.rand(count, generator=generator) * 50 if reference is None else reference[0]
    ref_r = -torch.rand(count, generator=generator) * 50 if reference is None else reference[1]
    return PreferenceBatch(
        images=torch.randn(count, 1, SIZE, SIZE, generator=generator), chosen=chosen, rejected=rejected,
        valid=(torch.rand(count, 1, SIZE, SIZE, generator=generator) > 0.3) if valid else None,
        reference_chosen_logps=ref_c, reference_rejected_logps=ref_r,
    )


def make_preference(beta: float = 1.0, loss_type: str = "sigmoid", regions: bool = False) -> PreferenceLoss:
    return PreferenceLoss(PreferenceLossConfig(loss_type, beta), regions)


def pair_mean_loss(*args, **kwargs) -> MAPOLoss:
    """The term as the mean of the pairs' losses (0.8's sizing), whose values these tests compute by hand."""
    return MAPOLoss(*args, scale="pair_mean", **kwargs)


def expected_dpo(logits: torch.Tensor, batch: PreferenceBatch, beta: float = 1.0, loss_type: str = "sigmoid"):
    lc, lr, n = mask_log_likelihoods(logits, batch.chosen, batch.rejected, batch.valid)
    return dpo_loss(lc, lr, batch.reference_chosen_logps, batch.reference_rejected_logps, n, beta, loss_type)


# ------------------------------------------------------------------------------------------------ without pairs
def test_without_pairs_equals_the_segmentation_loss_exactly():
    segmentation = nnunet_loss()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=0.5)
    out, tgt = outputs(BATCH), targets()
    expected = segmentation(out, tgt)
    got = mapo(out, tgt)
    assert torch.equal(got, expected)
    assert set(mapo.last_stats) == set(STEP_KEYS)
    assert all(math.isnan(v) for v in mapo.last_stats.values())


def test_initial_stats_are_inactive():
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=0.5)
    assert set(mapo.last_stats) == set(STEP_KEYS)
    assert all(math.isnan(v) for v in mapo.last_stats.values())


def test_without_deep_supervision():
    mapo = pair_mean_loss(nnunet_loss(deep_supervision=False), make_preference(), weight=1.0)
    out, tgt = outputs(BATCH + PAIRS)[0], targets()[0]
    assert torch.equal(mapo(out[:BATCH], tgt), nnunet_loss(deep_supervision=False)(out[:BATCH], tgt))
    batch = pairs()
    got = mapo(out, tgt, pairs=batch)
    expected = nnunet_loss(deep_supervision=False)(out[:BATCH], tgt) + expected_dpo(out[BATCH:], batch)[0].mean()
    assert torch.allclose(got, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------ with pairs
@pytest.mark.parametrize(("weight", "beta", "loss_type"), [(0.5, 1.0, "sigmoid"), (2.0, 0.1, "ipo"),
                                                           (1.0, 3.0, "hinge")])
def test_with_pairs_adds_weighted_dpo_on_the_last_rows(weight, beta, loss_type):
    out, tgt, batch = outputs(BATCH + PAIRS), targets(), pairs()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(beta, loss_type), weight)
    got = mapo(out, tgt, pairs=batch)
    segmentation = nnunet_loss()([o[:BATCH] for o in out], tgt)
    losses, chosen_r, rejected_r = expected_dpo(out[0][BATCH:], batch, beta, loss_type)
    assert torch.allclose(got, segmentation + weight * losses.mean(), atol=1e-6)
    stats = mapo.last_stats
    assert set(stats) == set(STEP_KEYS)
    assert stats["mapo_dpo_loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    assert stats["mapo_rewards_chosen"] == pytest.approx(chosen_r.mean().item(), rel=1e-5, abs=1e-7)
    assert stats["mapo_rewards_rejected"] == pytest.approx(rejected_r.mean().item(), rel=1e-5, abs=1e-7)
    assert stats["mapo_reward_margin"] == pytest.approx((chosen_r - rejected_r).mean().item(), rel=1e-5, abs=1e-7)
    assert stats["mapo_reward_accuracy"] == pytest.approx((chosen_r > rejected_r).float().mean().item())
    assert stats["mapo_margin_nats"] == pytest.approx((chosen_r - rejected_r).mean().item() / beta, rel=1e-5,
                                                      abs=1e-7)
    assert stats["mapo_term"] == pytest.approx(losses.mean().item(), rel=1e-5)
    assert stats["mapo_skipped_steps"] == 0.0


def test_pair_logits_of_a_pass_of_their_own_give_the_same_loss_as_appended_rows():
    out, tgt, batch = outputs(BATCH + PAIRS), targets(), pairs()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(0.5), 0.7)
    appended = mapo(out, tgt, pairs=batch)
    separate = mapo([o[:BATCH] for o in out], tgt, pairs=batch, pair_logits=out[0][BATCH:])
    torch.testing.assert_close(separate, appended)
    own = outputs(PAIRS, seed=9)[0]  # other logits for the pairs: another preference term, the same Dice+CE
    other = mapo([o[:BATCH] for o in out], tgt, pairs=batch, pair_logits=own)
    segmentation = nnunet_loss()([o[:BATCH] for o in out], tgt)
    torch.testing.assert_close(other, segmentation + 0.7 * expected_dpo(own, batch, 0.5)[0].mean())
    other.backward()
    assert own.grad is not None and own.grad.abs().sum() > 0


def test_two_objectives_combine_the_pairs_losses_with_adaptive_weights():
    out, tgt = outputs(BATCH + 4), targets()
    batch = pairs(count=4)
    batch.objective = torch.tensor([0, 1, 1, 0])
    mapo = pair_mean_loss(nnunet_loss(), make_preference(0.5), 0.7, num_objectives=2)
    got = mapo(out, tgt, pairs=batch)
    losses, chosen_r, rejected_r = expected_dpo(out[0][BATCH:], batch, 0.5)
    combined = combine_objectives(losses, chosen_r - rejected_r, batch.objective, 2)
    segmentation = nnunet_loss()([o[:BATCH] for o in out], tgt)
    torch.testing.assert_close(got, segmentation + 0.7 * combined)
    assert not torch.allclose(combined, losses.mean())  # not the plain mean: the margins differ per objective
    assert mapo.last_stats["mapo_term"] == pytest.approx(combined.item(), rel=1e-5)
    assert mapo.last_stats["mapo_dpo_loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    # pairs without objective tags (a set of one objective) are averaged
    batch.objective = None
    torch.testing.assert_close(mapo(out, tgt, pairs=batch), segmentation + 0.7 * losses.mean())
    with pytest.raises(ValueError, match="num_objectives"):
        pair_mean_loss(nnunet_loss(), make_preference(), 1.0, num_objectives=0)


def test_pair_rows_do_not_enter_the_segmentation_loss():
    out, tgt = outputs(BATCH + PAIRS), targets()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=0.0)
    got = mapo(out, tgt, pairs=pairs())
    assert torch.allclose(got, nnunet_loss()([o[:BATCH] for o in out], tgt), atol=1e-7)
    assert not math.isnan(mapo.last_stats["mapo_dpo_loss"])  # computed and logged even with weight 0


def test_gradients_reach_the_right_rows():
    out, tgt = outputs(BATCH + PAIRS), targets()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    mapo(out, tgt, pairs=pairs()).backward()
    full, half = out[0].grad, out[1].grad
    assert full[:BATCH].abs().sum() > 0  # Dice+CE
    assert full[BATCH:].abs().sum() > 0  # DPO on the full-resolution output
    assert torch.all(half[BATCH:] == 0)  # deep-supervision outputs of the pairs get nothing
    assert half[:BATCH].abs().sum() > 0


def test_pairs_are_used_for_one_call_only():
    out, tgt = outputs(BATCH + PAIRS), targets()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    mapo(out, tgt, pairs=pairs())
    assert not math.isnan(mapo.last_stats["mapo_dpo_loss"])
    plain = outputs(BATCH)
    assert torch.equal(mapo(plain, tgt), nnunet_loss()(plain, tgt))
    assert all(math.isnan(v) for v in mapo.last_stats.values())


def test_pairs_of_this_step_reach_a_call_without_them_and_only_inside_the_block():
    out, tgt, batch = outputs(BATCH + PAIRS), targets(), pairs()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    explicit = mapo(out, tgt, pairs=batch)
    with mapo.pairs_of_this_step(batch):
        implicit = mapo(out, tgt)  # as nnU-Net's train_step calls it
    torch.testing.assert_close(implicit, explicit)
    plain = outputs(BATCH)
    assert torch.equal(mapo(plain, tgt), nnunet_loss()(plain, tgt))  # after the block: no pairs
    with pytest.raises(RuntimeError), mapo.pairs_of_this_step(batch):
        raise RuntimeError("a failing step")
    assert mapo._step_pairs == (None, None)  # cleared also when the step fails


def test_empty_pairs_count_as_no_pairs():
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    plain, tgt = outputs(BATCH), targets()
    assert torch.equal(mapo(plain, tgt, pairs=pairs(count=0)), nnunet_loss()(plain, tgt))
    assert all(math.isnan(v) for v in mapo.last_stats.values())


# ------------------------------------------------------------------------------------------------ pair rows
def test_append_then_split_gives_back_the_batch_and_the_pair_rows():
    data, batch = torch.randn(BATCH, 1, SIZE, SIZE), pairs()
    joined = append_pair_rows(data, batch)
    assert joined.shape[0] == BATCH + PAIRS
    rows, pair_rows = split_pair_rows(joined, PAIRS)
    assert torch.equal(rows, data) and torch.equal(pair_rows, batch.images)
    scales, full = split_pair_rows([joined, joined[:, :, ::2, ::2]], PAIRS)
    assert [s.shape[0] for s in scales] == [BATCH, BATCH] and torch.equal(full, batch.images)


def test_append_without_pairs_is_the_identity_and_split_refuses_zero_rows():
    data = torch.randn(BATCH, 1, SIZE, SIZE)
    assert append_pair_rows(data, None) is data
    assert append_pair_rows(data, pairs(count=0)) is data
    with pytest.raises(ValueError, match="count must be >= 1"):
        split_pair_rows(data, 0)


def test_reward_accuracy_is_one_when_the_policy_prefers_y_plus():
    batch = pairs()
    out = outputs(BATCH + PAIRS)
    logits = out[0].detach().clone()
    with torch.no_grad():
        lc, lr, _ = mask_log_likelihoods(logits[BATCH:], batch.chosen, batch.rejected)
        batch.reference_chosen_logps, batch.reference_rejected_logps = lc.clone(), lr.clone()
        logits[BATCH:] += 5 * F.one_hot(batch.chosen.long(), CLASSES).permute(0, 3, 1, 2)  # boost y+
    out[0] = logits
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    mapo(out, targets(), pairs=batch)
    assert mapo.last_stats["mapo_reward_accuracy"] == 1.0
    assert mapo.last_stats["mapo_reward_margin"] > 0
    assert mapo.last_stats["mapo_dpo_loss"] < math.log(2)


def test_with_ignore_label_and_valid_masks():
    segmentation = nnunet_loss(ignore_label=3)
    out, tgt, batch = outputs(BATCH + PAIRS), targets(max_label=4), pairs(valid=True)
    mapo = pair_mean_loss(nnunet_loss(ignore_label=3), make_preference(), weight=0.7)
    got = mapo(out, tgt, pairs=batch)
    expected = segmentation([o[:BATCH] for o in out], tgt) + 0.7 * expected_dpo(out[0][BATCH:], batch)[0].mean()
    assert torch.allclose(got, expected, atol=1e-6)
    unmasked = PreferenceBatch(batch.images, batch.chosen, batch.rejected, None, batch.reference_chosen_logps,
                               batch.reference_rejected_logps)
    assert not torch.allclose(expected_dpo(out[0][BATCH:], batch)[0], expected_dpo(out[0][BATCH:], unmasked)[0])


def test_region_training():
    out = outputs(BATCH + PAIRS, channels=2)
    generator = torch.Generator().manual_seed(4)
    full = torch.rand(BATCH, 2, SIZE, SIZE, generator=generator) > 0.5
    tgt = [full[:, :, ::s, ::s].contiguous() for s in SCALES]
    chosen = torch.rand(PAIRS, 2, SIZE, SIZE, generator=generator) > 0.5
    batch = PreferenceBatch(torch.zeros(PAIRS, 1, SIZE, SIZE), chosen, ~chosen, None, -torch.ones(PAIRS) * 100,
                            -torch.ones(PAIRS) * 120)
    mapo = pair_mean_loss(nnunet_region_loss(), make_preference(regions=True), weight=0.5)
    got = mapo(out, tgt, pairs=batch)
    lc, lr, n = mask_log_likelihoods(out[0][BATCH:], chosen, ~chosen, regions=True)
    dpo = dpo_loss(lc, lr, batch.reference_chosen_logps, batch.reference_rejected_logps, n, 1.0)[0].mean()
    assert torch.allclose(got, nnunet_region_loss()([o[:BATCH] for o in out], tgt) + 0.5 * dpo, atol=1e-6)


# ------------------------------------------------------------------------------------------------ non-finite DPO
@pytest.mark.parametrize("bad", ["reference_inf", "reference_nan", "logits_nan"])
def test_non_finite_dpo_is_skipped(bad):
    out, tgt = outputs(BATCH + PAIRS), targets()
    value = {"reference_inf": float("inf"), "reference_nan": float("nan"), "logits_nan": -3.0}[bad]
    batch = pairs(reference=(torch.tensor([value, -3.0]), torch.tensor([-2.0, -3.0])))
    if bad == "logits_nan":  # e.g. an fp16 overflow in a pair row
        with torch.no_grad():
            out[0][BATCH, 0, 0, 0] = float("nan")
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    assert not torch.isfinite(expected_dpo(out[0][BATCH:], batch)[0].mean())
    got = mapo(out, tgt, pairs=batch)
    segmentation = nnunet_loss()([o[:BATCH] for o in out], tgt)
    assert torch.isfinite(got)
    assert torch.equal(got, segmentation)
    stats = mapo.last_stats
    assert set(stats) == set(STEP_KEYS)
    assert stats["mapo_skipped_steps"] == 1.0
    assert all(math.isnan(v) for k, v in stats.items() if k != "mapo_skipped_steps")
    got.backward()
    for o in out[:2]:  # the last deep-supervision output has weight 0 in nnU-Net
        assert o.grad is not None and torch.isfinite(o.grad).all()
    assert torch.all(out[0].grad[BATCH:] == 0)


def test_a_finite_step_after_a_skipped_one_resets_the_counter():
    out, tgt = outputs(BATCH + PAIRS), targets()
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    mapo(out, tgt, pairs=pairs(reference=(torch.tensor([float("nan"), 0.0]), torch.zeros(2))))
    assert mapo.last_stats["mapo_skipped_steps"] == 1.0
    mapo(out, tgt, pairs=pairs())
    assert mapo.last_stats["mapo_skipped_steps"] == 0.0


# ------------------------------------------------------------------------------------------------ construction
@pytest.mark.parametrize("weight", [-0.1, -1, float("nan")])
def test_invalid_weight_raises(weight):
    with pytest.raises(ValueError, match="weight must be >= 0"):
        pair_mean_loss(nnunet_loss(), make_preference(), weight)


def test_is_a_module_with_both_losses_as_children():
    segmentation, preference = nnunet_loss(), make_preference()
    mapo = MAPOLoss(segmentation, preference, 1)
    assert mapo.segmentation_loss is segmentation and mapo.preference_loss is preference
    assert isinstance(mapo.weight, float)
    assert list(dict(mapo.named_children())) == ["segmentation_loss", "preference_loss"]


def test_an_unknown_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed values: \\['voxel_gradient', 'pair_mean'\\]"):
        MAPOLoss(nnunet_loss(), make_preference(), 1.0, scale="sum")


# ------------------------------------------------------------------------------------------------ gradient sizing
def one_pair_step(batch_rows: int, disagree: int, config: PreferenceLossConfig, weight: float, pair_count: int = 1,
                  size: int = SIZE, scale: str = "voxel_gradient") -> tuple[torch.Tensor, torch.Tensor]:
    """A step at a round's start (reference = policy): the pair rows' logit gradients and their disagreement."""
    generator = torch.Generator().manual_seed(disagree)
    logits = torch.randn(batch_rows + pair_count, CLASSES, size, size, generator=generator)
    chosen = torch.randint(0, CLASSES, (pair_count, size, size), generator=generator)
    rejected = chosen.clone().flatten(1)
    rejected[:, :disagree] = (rejected[:, :disagree] + 1) % CLASSES
    rejected = rejected.reshape(chosen.shape)
    ref_c, ref_r, _ = mask_log_likelihoods(logits[batch_rows:], chosen, rejected)
    batch = PreferenceBatch(torch.zeros(pair_count, 1, size, size), chosen, rejected, None, ref_c, ref_r)
    logits.requires_grad_()
    target = torch.randint(0, CLASSES, (batch_rows, 1, size, size), generator=generator).float()
    loss = MAPOLoss(nnunet_loss(deep_supervision=False), PreferenceLoss(config), weight, scale=scale)
    loss(logits, target, pairs=batch).backward()
    return logits.grad[batch_rows:], chosen != rejected


def largest_cross_entropy_gradient(batch_rows: int, size: int = SIZE) -> float:
    """The largest gradient nnU-Net's cross-entropy gives one voxel's logits: a voxel sure of the wrong class."""
    logits = torch.zeros(batch_rows, CLASSES, size, size)
    logits[:, 1] = 30.0  # every voxel certain of class 1, the target class 0
    logits.requires_grad_()
    nnunet_loss(deep_supervision=False).ce(logits, torch.zeros(batch_rows, 1, size, size)).backward()
    return float(logits.grad.abs().max())


@pytest.mark.parametrize("loss_type", ["sigmoid", "cdpo", "ipo", "hinge", "target_margin", "dpop"])
@pytest.mark.parametrize(("batch_rows", "disagree", "beta"), [(2, 1, 0.1), (2, 200, 1.0), (32, 1, 5.0),
                                                              (32, 50, 0.1), (8, 256, 0.6)])
def test_at_a_rounds_start_a_disagreement_voxel_gets_weight_times_the_largest_cross_entropy_gradient(
        loss_type, batch_rows, disagree, beta) -> None:
    weight = 0.7
    gradient, disagreement = one_pair_step(batch_rows, disagree, PreferenceLossConfig(loss_type, beta), weight)
    per_voxel = gradient.abs().amax(1)  # the largest component of each voxel's logit gradient
    ratio = per_voxel[disagreement] / largest_cross_entropy_gradient(batch_rows)
    torch.testing.assert_close(ratio, torch.full_like(ratio, weight), rtol=2e-3, atol=0)
    assert torch.all(per_voxel[~disagreement] == 0)  # voxels where y+ and y- agree get nothing


def test_the_sizing_does_not_depend_on_the_pairs_per_step() -> None:
    config = PreferenceLossConfig("cdpo", 1.0)
    one, mask_one = one_pair_step(4, 30, config, 1.0, pair_count=1)
    three, mask_three = one_pair_step(4, 30, config, 1.0, pair_count=3)
    assert one[0].abs().amax(0)[mask_one[0]].max() == pytest.approx(float(three.abs().amax(1)[mask_three].max()),
                                                                     rel=1e-4)


def test_pair_mean_sizing_grows_with_beta_and_shrinks_with_the_disagreement() -> None:
    # 0.8's sizing, for contrast: the gradient per voxel is weight * beta / 2 / |D| / pairs, far above cross-entropy's
    ce = largest_cross_entropy_gradient(32)
    ratios = []
    for disagree in (1, 100):
        logits_grad, mask = one_pair_step(32, disagree, PreferenceLossConfig("sigmoid", 0.1), 0.5, scale="pair_mean")
        ratios.append(float(logits_grad.abs().amax(1)[mask].max()) / ce)
    assert ratios[0] == pytest.approx(100 * ratios[1], rel=1e-3)
    assert ratios[1] > 1  # at |D| = 100 of a 16 x 16 patch still above cross-entropy's largest gradient


# ------------------------------------------------------------------------------------------------ host synchronisation
def test_a_step_with_pairs_waits_for_the_device_at_most_once(monkeypatch) -> None:
    calls = []
    for name in ("item", "__bool__", "__float__", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: calls.append(_n) or _o(self, *a))
    out, tgt, batch = outputs(BATCH + PAIRS), targets(), pairs()
    pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0, check_finite=True)(out, tgt, pairs=batch)
    assert calls == ["__bool__"]  # the finite check; the statistics stay on the device
    calls.clear()
    pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0, check_finite=False)(out, tgt, pairs=batch)
    assert calls == []


def test_without_the_host_check_a_non_finite_term_is_zero_and_counted() -> None:
    out, tgt = outputs(BATCH + PAIRS), targets()
    batch = pairs(reference=(torch.tensor([float("inf"), -3.0]), torch.tensor([-2.0, -3.0])))
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0, check_finite=False)
    got = mapo(out, tgt, pairs=batch)
    assert torch.isfinite(got) and torch.allclose(got, nnunet_loss()([o[:BATCH] for o in out], tgt))
    assert float(mapo.last_stats["mapo_skipped_steps"]) == 1.0 and math.isnan(mapo.last_stats["mapo_dpo_loss"])
    healthy = mapo(out, tgt, pairs=pairs())
    assert float(mapo.last_stats["mapo_skipped_steps"]) == 0.0
    assert torch.allclose(healthy, pair_mean_loss(nnunet_loss(), make_preference(), 1.0)(out, tgt, pairs=pairs()))


def test_collate_step_stats_gives_one_list_per_key_in_step_order() -> None:
    mapo = pair_mean_loss(nnunet_loss(), make_preference(), weight=1.0)
    steps = []
    for batch in (pairs(seed=2), None, pairs(seed=5)):
        mapo(outputs(BATCH + (PAIRS if batch else 0)), targets(), pairs=batch)
        steps.append(mapo.last_stats)
    collated = collate_step_stats(steps)
    assert list(collated) == list(STEP_KEYS) and all(len(v) == 3 for v in collated.values())
    assert math.isnan(collated["mapo_dpo_loss"][1]) and collated["mapo_skipped_steps"][0] == 0.0
    assert collated["mapo_dpo_loss"][2] == pytest.approx(float(steps[2]["mapo_dpo_loss"]))
    assert collate_step_stats([]) == {key: [] for key in STEP_KEYS}
