"""Tests of ``nnunetv2_mapo.method.preference_loss``: log-likelihoods, DPO and variants, and that they learn."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_mapo.method import LOSS_TYPES
from nnunetv2_mapo.method.preference_loss import (
    DEFAULT_BETA,
    PreferenceLoss,
    PreferenceLossConfig,
    disagreement_counts,
    dpo_loss,
    mask_log_likelihoods,
    preference_loss,
)

pytestmark = pytest.mark.usefixtures("mapo_single_thread")

LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------------ log-likelihoods
def hand_label_logps(logits, chosen, rejected, valid=None):
    """Plain-Python reference: sum of log softmax over voxels where the masks disagree (and are valid)."""
    n, c = logits.shape[:2]
    flat = logits.reshape(n, c, -1)
    ch, rj = chosen.reshape(n, -1), rejected.reshape(n, -1)
    ok = valid.reshape(n, -1) if valid is not None else torch.ones_like(ch, dtype=torch.bool)
    out_c, out_r, count = [], [], []
    for b in range(n):
        sc = sr = 0.0
        k = 0
        for i in range(flat.shape[2]):
            a, r = int(ch[b, i]), int(rj[b, i])
            if a == r or not bool(ok[b, i]):
                continue
            z = [float(flat[b, j, i]) for j in range(c)]
            log_norm = math.log(sum(math.exp(v) for v in z))
            sc += z[a] - log_norm
            sr += z[r] - log_norm
            k += 1
        out_c.append(sc)
        out_r.append(sr)
        count.append(k)
    return torch.tensor(out_c), torch.tensor(out_r), torch.tensor(count, dtype=torch.float32)


def test_label_log_likelihoods_match_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    chosen = torch.randint(0, 3, (2, 4, 5))
    rejected = chosen.clone()
    rejected[0, :2, :2] = (chosen[0, :2, :2] + 1) % 3
    rejected[1, 3, :] = (chosen[1, 3, :] + 2) % 3
    got = mask_log_likelihoods(logits, chosen, rejected)
    expected = hand_label_logps(logits, chosen, rejected)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-5)
    assert got[2].tolist() == [4.0, 5.0]
    assert (got[0] < 0).all() and (got[1] < 0).all()


def test_a_tiny_example_by_hand():
    # One item, two classes, three voxels: masks disagree on voxel 1 only.
    logits = torch.tensor([[[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]]])  # (1, 2, 3)
    chosen = torch.tensor([[0, 1, 1]])
    rejected = torch.tensor([[0, 0, 1]])
    lc, lr, count = mask_log_likelihoods(logits, chosen, rejected)
    log_norm = math.log(math.exp(2.0) + math.exp(0.0))
    assert lc.item() == pytest.approx(0.0 - log_norm, abs=1e-6)  # class 1 at voxel 1
    assert lr.item() == pytest.approx(2.0 - log_norm, abs=1e-6)  # class 0 at voxel 1
    assert count.item() == 1


def test_agreeing_voxels_do_not_count():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 6, 6)
    chosen = torch.randint(0, 3, (1, 6, 6))
    rejected = chosen.clone()
    rejected[0, 0, 0] = (chosen[0, 0, 0] + 1) % 3
    lc, lr, count = mask_log_likelihoods(logits, chosen, rejected)
    other = logits.clone()
    other[0, :, 1:, :] = torch.randn(3, 5, 6) * 10  # change only voxels where the masks agree
    lc2, lr2, count2 = mask_log_likelihoods(other, chosen, rejected)
    assert torch.equal(lc, lc2) and torch.equal(lr, lr2) and count.item() == count2.item() == 1
    # and the full-mask margin equals the disagreement-only margin
    log_probs = torch.log_softmax(logits, 1)
    full_c = log_probs.gather(1, chosen.unsqueeze(1)).sum()
    full_r = log_probs.gather(1, rejected.unsqueeze(1)).sum()
    assert (full_c - full_r).item() == pytest.approx((lc - lr).item(), abs=1e-5)


def test_identical_masks_give_zero():
    logits = torch.randn(2, 3, 4, 4)
    masks = torch.randint(0, 3, (2, 4, 4))
    lc, lr, count = mask_log_likelihoods(logits, masks, masks.clone())
    assert lc.tolist() == [0.0, 0.0] and lr.tolist() == [0.0, 0.0] and count.tolist() == [0.0, 0.0]


def test_valid_mask_excludes_voxels():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 4)
    chosen = torch.zeros(2, 4, 4, dtype=torch.long)
    rejected = torch.ones(2, 4, 4, dtype=torch.long)  # disagree everywhere
    valid = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    valid[0, 0, :, :2] = False
    valid[1] = False
    lc, lr, count = mask_log_likelihoods(logits, chosen, rejected, valid)
    assert count.tolist() == [8.0, 0.0]
    expected = hand_label_logps(logits, chosen, rejected, valid)
    assert torch.allclose(lc, expected[0], atol=1e-5) and torch.allclose(lr, expected[1], atol=1e-5)
    assert lc[1].item() == 0.0 and lr[1].item() == 0.0


def test_3d_and_uint8_masks():
    torch.manual_seed(3)
    logits = torch.randn(1, 2, 2, 3, 3)
    chosen = torch.randint(0, 2, (1, 2, 3, 3)).to(torch.uint8)
    rejected = 1 - chosen
    lc, lr, count = mask_log_likelihoods(logits, chosen, rejected)
    expected = hand_label_logps(logits, chosen.long(), rejected.long())
    assert torch.allclose(lc, expected[0], atol=1e-5) and torch.allclose(lr, expected[1], atol=1e-5)
    assert count.item() == 18


def test_region_log_likelihoods_are_bernoulli():
    torch.manual_seed(4)
    logits = torch.randn(2, 2, 3, 3)
    chosen = torch.rand(2, 2, 3, 3) > 0.5
    rejected = chosen.clone()
    rejected[0, 0, 0, :] = ~rejected[0, 0, 0, :]  # 3 entries in region 0
    rejected[1, 1, :, 1] = ~rejected[1, 1, :, 1]  # 3 entries in region 1
    rejected[1, 0, 2, 2] = ~rejected[1, 0, 2, 2]  # 1 entry in region 0
    lc, lr, count = mask_log_likelihoods(logits, chosen, rejected, regions=True)
    p = torch.sigmoid(logits.double())
    disagree = chosen != rejected
    exp_c = torch.where(chosen, p.log(), (1 - p).log())
    exp_r = torch.where(rejected, p.log(), (1 - p).log())
    assert torch.allclose(lc.double(), (exp_c * disagree).sum((1, 2, 3)), atol=1e-5)
    assert torch.allclose(lr.double(), (exp_r * disagree).sum((1, 2, 3)), atol=1e-5)
    assert count.tolist() == [3.0, 4.0]


def test_region_valid_mask_applies_to_every_region():
    logits = torch.randn(1, 2, 2, 2)
    chosen = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    rejected = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    valid = torch.tensor([[[[True, False], [False, False]]]])
    lc, lr, count = mask_log_likelihoods(logits, chosen, rejected, valid, regions=True)
    assert count.item() == 2  # one voxel x two regions
    assert lc.item() == pytest.approx(F.logsigmoid(logits[0, :, 0, 0]).sum().item(), abs=1e-6)
    assert lr.item() == pytest.approx(F.logsigmoid(-logits[0, :, 0, 0]).sum().item(), abs=1e-6)


@pytest.mark.parametrize(("chosen_shape", "rejected_shape", "regions"), [
    ((2, 4, 5), (2, 4, 5), False),  # spatial mismatch
    ((2, 4, 4), (2, 4, 5), False),
    ((2, 1, 4, 4), (2, 1, 4, 4), False),  # label maps with a channel axis
    ((2, 4, 4), (2, 4, 4), True),  # region masks without the region axis
    ((2, 3, 4, 4), (2, 3, 4, 5), True),
])
def test_shape_mismatch_raises(chosen_shape, rejected_shape, regions):
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="must have"):
        mask_log_likelihoods(logits, torch.zeros(chosen_shape, dtype=torch.long),
                             torch.zeros(rejected_shape, dtype=torch.long), regions=regions)


def make_loss(beta: float = DEFAULT_BETA, loss_type: str = "sigmoid", regions: bool = False, **settings):
    """The module for one loss type, as the trainer builds it."""
    return PreferenceLoss(PreferenceLossConfig(loss_type, beta, **settings), regions)


def config_losses(config: PreferenceLossConfig, pc, pr, rc, rr, n):
    t = lambda v: torch.as_tensor(v, dtype=torch.float32).reshape(-1)  # noqa: E731
    return preference_loss(t(pc), t(pr), t(rc), t(rr), t(n), config)


# ------------------------------------------------------------------------------------------------ dpo_loss
def call(pc, pr, rc, rr, n, beta=1.0, loss_type="sigmoid"):
    t = lambda v: torch.as_tensor(v, dtype=torch.float32).reshape(-1)  # noqa: E731
    return dpo_loss(t(pc), t(pr), t(rc), t(rr), t(n), beta, loss_type)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_loss_is_ln2_when_policy_equals_reference(beta):
    losses, rc, rr = call([-3.0, -100.0], [-7.0, -1.0], [-3.0, -100.0], [-7.0, -1.0], [4, 9], beta)
    assert torch.allclose(losses, torch.full((2,), LN2))
    assert rc.tolist() == [0.0, 0.0] and rr.tolist() == [0.0, 0.0]


def test_rewards_are_beta_times_normalized_log_ratio():
    losses, chosen_r, rejected_r = call([-2.0], [-10.0], [-6.0], [-4.0], [8], beta=0.5)
    assert chosen_r.item() == pytest.approx(0.5 * (-2.0 + 6.0) / 8)
    assert rejected_r.item() == pytest.approx(0.5 * (-10.0 + 4.0) / 8)
    margin = (4.0 - (-6.0)) / 8
    assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * margin))), rel=1e-6)


def test_zero_disagreement_is_clamped_to_one():
    losses, chosen_r, _ = call([-1.0], [-1.0], [-3.0], [-1.0], [0], beta=1.0)
    assert chosen_r.item() == pytest.approx(2.0)
    assert torch.isfinite(losses).all()


def test_rewards_are_detached():
    pc = torch.tensor([-1.0], requires_grad=True)
    losses, chosen_r, rejected_r = dpo_loss(pc, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]),
                                            torch.tensor([2.0]), 1.0)
    assert losses.requires_grad
    assert not chosen_r.requires_grad and not rejected_r.requires_grad


def test_sign_and_monotonicity():
    base = call([-5.0], [-5.0], [-5.0], [-5.0], [2])[0].item()
    better = call([-4.0], [-5.0], [-5.0], [-5.0], [2])[0].item()  # y+ more likely than under the reference
    worse = call([-6.0], [-5.0], [-5.0], [-5.0], [2])[0].item()
    rejected_down = call([-5.0], [-6.0], [-5.0], [-5.0], [2])[0].item()
    assert better < base < worse
    assert rejected_down < base
    values = [call([v], [-5.0], [-5.0], [-5.0], [2])[0].item() for v in (-8.0, -6.0, -5.0, -4.0, -2.0)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing in the chosen log-likelihood
    assert all(0 < v for v in values)


def test_larger_disagreement_shrinks_the_margin():
    small = call([-4.0], [-6.0], [-5.0], [-5.0], [1])[0].item()
    large = call([-4.0], [-6.0], [-5.0], [-5.0], [100])[0].item()
    assert small < large < LN2


def test_gradient_of_the_sigmoid_loss():
    pc = torch.tensor([-4.0], requires_grad=True)
    pr = torch.tensor([-6.0], requires_grad=True)
    beta, n = 0.7, 3.0
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([n]), beta)
    loss.sum().backward()
    margin = (1.0 - (-1.0)) / n
    expected = -beta / n * (1 / (1 + math.exp(beta * margin)))
    assert pc.grad.item() == pytest.approx(expected, rel=1e-5)
    assert pr.grad.item() == pytest.approx(-expected, rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_formula(beta):
    losses, _, _ = call([-4.0, -5.0], [-6.0, -5.0], [-5.0, -5.0], [-5.0, -5.0], [2, 2], beta, "ipo")
    margins = [(1.0 + 1.0) / 2, 0.0]
    expected = [(m - 1 / (2 * beta)) ** 2 for m in margins]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_ipo_is_minimal_at_the_target_margin():
    beta = 0.5  # target margin 1 / (2 beta) = 1
    losses = [call([-5.0 + m], [-5.0], [-5.0], [-5.0], [1], beta, "ipo")[0].item() for m in (0.0, 0.5, 1.0, 1.5, 3.0)]
    assert losses[2] == pytest.approx(0.0, abs=1e-12)
    assert losses[0] > losses[1] > losses[2] < losses[3] < losses[4]


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_hinge_formula(beta):
    losses, _, _ = call([-4.0, -5.0, 0.0], [-6.0, -5.0, -10.0], [-5.0] * 3, [-5.0] * 3, [2, 2, 1], beta, "hinge")
    margins = [1.0, 0.0, 10.0]
    expected = [max(0.0, 1.0 - beta * m) for m in margins]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_invalid_beta_raises(beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        make_loss(beta=beta)
    with pytest.raises(ValueError, match="beta must be > 0"):
        call([-1.0], [-1.0], [-1.0], [-1.0], [1], beta)


@pytest.mark.parametrize("loss_type", ["kto", "", "SIGMOID", None])
def test_invalid_loss_type_raises(loss_type):
    with pytest.raises(ValueError, match="Unknown loss_type"):
        make_loss(loss_type=loss_type)
    with pytest.raises(ValueError, match="Unknown loss_type"):
        call([-1.0], [-1.0], [-1.0], [-1.0], [1], 1.0, loss_type)


# ------------------------------------------------------------------------------------------------ DPOLoss module
def test_module_combines_log_likelihoods_and_loss():
    torch.manual_seed(5)
    logits = torch.randn(3, 3, 5, 5, requires_grad=True)
    chosen = torch.randint(0, 3, (3, 5, 5))
    rejected = torch.randint(0, 3, (3, 5, 5))
    valid = torch.rand(3, 1, 5, 5) > 0.2
    ref_c, ref_r = torch.tensor([-4.0, -3.0, -6.0]), torch.tensor([-5.0, -2.0, -6.0])
    module = make_loss(beta=0.3, loss_type="sigmoid")
    losses, chosen_r, rejected_r, count = module(logits, chosen, rejected, ref_c, ref_r, valid)
    lc, lr, n = mask_log_likelihoods(logits, chosen, rejected, valid)
    assert torch.equal(count, n)
    expected = dpo_loss(lc, lr, ref_c, ref_r, n, 0.3)
    assert torch.allclose(losses, expected[0]) and torch.allclose(chosen_r, expected[1])
    assert torch.allclose(rejected_r, expected[2])
    losses.mean().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_module_computes_in_float32_for_half_logits():
    torch.manual_seed(6)
    logits = torch.randn(2, 3, 4, 4)
    chosen = torch.randint(0, 3, (2, 4, 4))
    rejected = (chosen + 1) % 3
    ref = mask_log_likelihoods(logits.half().float(), chosen, rejected)
    losses = make_loss()(logits.half(), chosen, rejected, ref[0], ref[1])[0]
    assert losses.dtype == torch.float32
    assert torch.allclose(losses, torch.full_like(losses, LN2), atol=1e-6)


def test_module_stays_in_float32_inside_an_autocast_region():
    torch.manual_seed(7)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    chosen = torch.randint(0, 3, (2, 8, 8))
    rejected = (chosen + 1) % 3
    ref_chosen, ref_rejected, _ = mask_log_likelihoods(logits.detach() - 0.1 * torch.rand_like(logits), chosen,
                                                       rejected)
    loss = make_loss(beta=0.5)
    expected = loss(logits, chosen, rejected, ref_chosen, ref_rejected)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as nnU-Net's float16/bfloat16 autocast on a GPU
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16  # autocast is on here
        losses = loss(logits, chosen, rejected, ref_chosen.bfloat16(), ref_rejected.bfloat16())[0]
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses, expected, atol=2e-3, rtol=0)  # only the bfloat16 references round
    losses.sum().backward()
    assert logits.grad.dtype == torch.float32 and torch.isfinite(logits.grad).all()


def test_module_regions_flag_selects_the_bernoulli_likelihood():
    torch.manual_seed(7)
    logits = torch.randn(1, 2, 3, 3)
    chosen = torch.rand(1, 2, 3, 3) > 0.5
    rejected = ~chosen
    zero = torch.zeros(1)
    regions = make_loss(regions=True)(logits, chosen, rejected, zero, zero)
    lc, lr, n = mask_log_likelihoods(logits, chosen, rejected, regions=True)
    assert torch.allclose(regions[1], lc / n)
    with pytest.raises(ValueError):
        make_loss(regions=False)(logits, chosen, rejected, zero, zero)


def test_module_stores_its_arguments():
    module = make_loss(beta=2.0, loss_type="hinge", regions=True)
    assert (module.beta, module.loss_type, module.regions) == (2.0, "hinge", True)
    assert list(module.parameters()) == []
    assert PreferenceLoss().config == PreferenceLossConfig()


def test_the_configs_defaults_are_the_trainers() -> None:
    from nnunetv2_mapo.training.settings import ALL_SETTINGS, preference_loss_config

    defaults = {name: setting.default for name, setting in ALL_SETTINGS.items()}
    assert preference_loss_config(defaults) == PreferenceLossConfig()
    assert PreferenceLossConfig().beta == DEFAULT_BETA


# ------------------------------------------------------------------------------------------------ DPO learns
class TinySegNet(nn.Module):
    def __init__(self, out_channels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, out_channels, 1))

    def forward(self, x):
        return self.body(x)


def preference_problem(regions: bool = False):
    """Four fixed items: y+ is a square, y- the same square shifted (disagreement on its edges)."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 12, 12)
    chosen = torch.zeros(4, 12, 12, dtype=torch.long)
    rejected = torch.zeros(4, 12, 12, dtype=torch.long)
    chosen[:, 3:8, 3:8] = 1
    chosen[:, 4:6, 4:6] = 2
    rejected[:, 5:10, 4:9] = 1
    if regions:
        chosen = torch.stack([chosen > 0, chosen == 2], 1)
        rejected = torch.stack([rejected > 0, rejected == 2], 1)
    return x, chosen, rejected


@pytest.mark.parametrize(("optimizer", "loss_type", "regions"), [
    ("adam", "sigmoid", False),
    ("sgd", "sigmoid", False),
    ("adam", "ipo", False),
    ("adam", "hinge", False),
    ("adam", "sigmoid", True),
    ("adam", "simpo", False),
    ("adam", "dpop", False),
    ("adam", "simpo", True),
    ("adam", "cdpo", False),
    ("adam", "target_margin", False),
    ("adam", "rpo", False),
    ("adam", "cdpo", True),
])
def test_optimizing_dpo_raises_the_preference_margin(optimizer, loss_type, regions):
    x, chosen, rejected = preference_problem(regions)
    torch.manual_seed(1)
    network = TinySegNet(2 if regions else 3)
    with torch.no_grad():
        ref_c, ref_r, _ = mask_log_likelihoods(network(x), chosen, rejected, regions=regions)
    criterion = make_loss(beta=1.0, loss_type=loss_type, regions=regions, simpo_gamma=0.5, dpop_lambda=10.0)
    initial_loss = criterion(network(x), chosen, rejected, ref_c, ref_r)[0]
    if loss_type in ("sigmoid", "dpop"):  # r+ = r- = 0 at the start: DPO-Positive's penalty is 0 too
        assert torch.allclose(initial_loss, torch.full_like(initial_loss, LN2), atol=1e-6)
    opt = (torch.optim.Adam(network.parameters(), lr=1e-2) if optimizer == "adam"
           else torch.optim.SGD(network.parameters(), lr=0.5, momentum=0.9))
    for _ in range(15):
        opt.zero_grad()
        losses = criterion(network(x), chosen, rejected, ref_c, ref_r)[0]
        losses.mean().backward()
        opt.step()
    with torch.no_grad():
        logits = network(x)
        lc, lr, _ = mask_log_likelihoods(logits, chosen, rejected, regions=regions)
        final_loss, chosen_r, rejected_r, _ = criterion(logits, chosen, rejected, ref_c, ref_r)
    margin_gain = (lc - lr) - (ref_c - ref_r)
    if loss_type == "rpo":  # its likelihood term dominates at alpha 1: y+ itself becomes more likely everywhere
        assert (lc > ref_c).all() and (margin_gain.mean() > 0)
    else:
        assert (margin_gain > 0).all()
        assert (chosen_r > rejected_r).float().mean().item() > 0.5
    assert final_loss.mean().item() < initial_loss.mean().item()


# ------------------------------------------------------------------------------------------------ SimPO and DPOP
def simpo(chosen, rejected, count, beta, gamma):
    return preference_loss(chosen, rejected, torch.zeros_like(chosen), torch.zeros_like(chosen), count,
                           PreferenceLossConfig("simpo", beta, simpo_gamma=gamma))


def dpop(policy_c, policy_r, ref_c, ref_r, count, beta, penalty):
    return preference_loss(policy_c, policy_r, ref_c, ref_r, count, PreferenceLossConfig("dpop", beta,
                                                                                         dpop_lambda=penalty))


def test_simpo_known_values() -> None:
    chosen, rejected, count = torch.tensor([-2.0, -6.0]), torch.tensor([-4.0, -2.0]), torch.tensor([2.0, 4.0])
    losses, chosen_rewards, rejected_rewards = simpo(chosen, rejected, count, beta=2.0, gamma=0.5)
    assert chosen_rewards.tolist() == [-2.0, -3.0] and rejected_rewards.tolist() == [-4.0, -1.0]  # 2 * l / |D|
    expected = [-math.log(1 / (1 + math.exp(-(-2.0 + 4.0 - 0.5)))), -math.log(1 / (1 + math.exp(-(-3.0 + 1.0 - 0.5))))]
    assert losses.tolist() == pytest.approx(expected)
    without_margin = simpo(chosen, rejected, count, 2.0, 0.0)[0]  # no reference: log-likelihoods only
    assert torch.equal(without_margin, -F.logsigmoid(chosen_rewards - rejected_rewards))
    ignored_reference = preference_loss(chosen, rejected, torch.full((2,), 7.0), torch.full((2,), -3.0), count,
                                        PreferenceLossConfig("simpo", 2.0, simpo_gamma=0.5))[0]
    assert torch.equal(ignored_reference, losses)


def test_dpop_equals_dpo_while_y_plus_gains_and_penalises_a_falling_y_plus() -> None:
    count = torch.tensor([4.0, 4.0])
    ref_c, ref_r = torch.tensor([-8.0, -8.0]), torch.tensor([-8.0, -8.0])
    policy_c, policy_r = torch.tensor([-4.0, -12.0]), torch.tensor([-12.0, -20.0])  # y+ up, then y+ down by 4
    dpo, chosen_r, rejected_r = dpo_loss(policy_c, policy_r, ref_c, ref_r, count, beta=0.5)
    dpop_losses, chosen_p, rejected_p = dpop(policy_c, policy_r, ref_c, ref_r, count, beta=0.5, penalty=3.0)
    assert torch.equal(chosen_r, chosen_p) and torch.equal(rejected_r, rejected_p)
    assert dpop_losses[0] == pytest.approx(float(dpo[0]))  # r+ = 0.5 > 0: no penalty
    # r+ = -0.5, r- = -1.5: margin 1.0 minus 3 * 0.5 = -0.5
    assert dpop_losses[1] == pytest.approx(-math.log(1 / (1 + math.exp(0.5))))
    assert dpop_losses[1] > dpo[1]
    assert torch.equal(dpop(policy_c, policy_r, ref_c, ref_r, count, 0.5, 0.0)[0], dpo)  # lambda 0 is DPO


def test_dpop_pushes_y_plus_up_where_dpo_lets_it_fall() -> None:
    # Both masks equally likely under the reference; DPO only needs their difference, DPOP also y+'s own level.
    count = torch.tensor([1.0])
    policy_c = torch.tensor([-3.0], requires_grad=True)
    policy_r = torch.tensor([-6.0], requires_grad=True)
    reference = torch.tensor([-2.0])  # y+ is already below its reference likelihood
    dpop(policy_c, policy_r, reference, reference, count, beta=1.0, penalty=5.0)[0].sum().backward()
    dpop_grad = policy_c.grad.clone()
    policy_c.grad = None
    dpo_loss(policy_c, policy_r, reference, reference, count, beta=1.0)[0].sum().backward()
    assert dpop_grad < policy_c.grad < 0  # descent raises l(y+), and more so with the penalty


# ------------------------------------------------------------------------------------------------ bounded losses
def test_cdpo_known_values_and_its_optimum() -> None:
    config = PreferenceLossConfig("cdpo", beta=0.5, label_smoothing=0.2)
    losses, _, _ = config_losses(config, [-4.0, -5.0], [-6.0, -5.0], [-5.0, -5.0], [-5.0, -5.0], [2, 2])
    h = 1.0  # ((-4 + 5) - (-6 + 5)) / 2
    expected = -0.8 * math.log(1 / (1 + math.exp(-0.5 * h))) - 0.2 * math.log(1 / (1 + math.exp(0.5 * h)))
    assert losses[0].item() == pytest.approx(expected, rel=1e-6)
    assert losses[1].item() == pytest.approx(LN2, rel=1e-6)  # at h = 0 both terms are ln 2
    assert config.optimum_margin == pytest.approx(math.log(0.8 / 0.2) / 0.5)
    at = lambda m: config_losses(config, [-5.0 + m], [-5.0], [-5.0], [-5.0], [1])[0].item()  # noqa: E731
    optimum = config.optimum_margin
    assert at(optimum) < at(optimum - 0.5) and at(optimum) < at(optimum + 0.5)  # a minimum, not a floor


def test_target_margin_known_values_and_no_pull_beyond_the_target() -> None:
    config = PreferenceLossConfig("target_margin", target_margin=2.0)
    margins = [0.0, 1.0, 2.0, 5.0]
    losses = [config_losses(config, [-5.0 + m], [-5.0], [-5.0], [-5.0], [1])[0].item() for m in margins]
    assert losses == pytest.approx([1.0, 0.25, 0.0, 0.0])
    policy_c = torch.tensor([-2.0], requires_grad=True)  # h = 3 > 2: nothing left to pull
    preference_loss(policy_c, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), torch.ones(1),
                    config)[0].sum().backward()
    assert policy_c.grad.item() == 0.0
    assert config.optimum_margin == 2.0


def test_rpo_is_dpo_plus_the_preferred_masks_per_voxel_nll() -> None:
    config = PreferenceLossConfig("rpo", beta=0.5, rpo_alpha=2.0)
    pc, pr, rc, rr, n = [-4.0], [-6.0], [-5.0], [-5.0], [4]
    got = config_losses(config, pc, pr, rc, rr, n)[0].item()
    dpo = config_losses(PreferenceLossConfig("sigmoid", 0.5), pc, pr, rc, rr, n)[0].item()
    assert got == pytest.approx(dpo + 2.0 * 4.0 / 4)


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t not in ("simpo", "rpo")])
@pytest.mark.parametrize("beta", [0.1, 0.6, 3.0])
def test_start_slope_is_the_losses_slope_where_every_round_starts(loss_type, beta) -> None:
    config = PreferenceLossConfig(loss_type, beta, target_margin=1.5)
    policy_c = torch.tensor([-5.0], requires_grad=True)  # policy = reference: h = 0
    preference_loss(policy_c, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), torch.ones(1),
                    config)[0].sum().backward()
    assert -policy_c.grad.item() == pytest.approx(config.start_slope, rel=1e-5)


def fit_one_pair(config: PreferenceLossConfig, steps: int) -> list[float]:
    """Gradient descent on the two free log-likelihoods of one fixed pair (|D| = 1): the margin after each step."""
    policy = torch.zeros(2, requires_grad=True)  # l(y+), l(y-) as offsets from the reference
    optimizer = torch.optim.SGD([policy], lr=0.05)
    margins = []
    for _ in range(steps):
        optimizer.zero_grad()
        preference_loss(policy[:1], policy[1:], torch.zeros(1), torch.zeros(1), torch.ones(1),
                        config)[0].sum().backward()
        optimizer.step()
        margins.append(float(policy[0].detach() - policy[1].detach()))
    return margins


@pytest.mark.parametrize("config", [PreferenceLossConfig("cdpo", 1.0, label_smoothing=0.1),
                                    PreferenceLossConfig("ipo", 0.6),
                                    PreferenceLossConfig("target_margin", target_margin=1.0)],
                         ids=["cdpo", "ipo", "target_margin"])
def test_bounded_losses_stop_at_their_optimum_on_a_fixed_pair_where_dpo_keeps_going(config) -> None:
    margins = fit_one_pair(config, 3000)
    optimum = config.optimum_margin
    assert optimum <= margins[-1] * 1.01 and margins[-1] <= optimum * 1.05  # the hinge may stop just past it
    assert abs(margins[-1] - margins[-1000]) < 0.01 * optimum  # settled
    dpo = fit_one_pair(PreferenceLossConfig("sigmoid", 1.0), 3000)
    assert dpo[-1] > 2 * optimum and dpo[-1] > dpo[-2000] + 0.5  # still climbing


@pytest.mark.parametrize(("settings", "message"), [
    ({"beta": 0.0}, "beta must be > 0"), ({"beta": float("nan")}, "beta must be > 0"),
    ({"label_smoothing": 0.0}, "label_smoothing must be in"), ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"target_margin": 0.0}, "target_margin must be > 0"), ({"simpo_gamma": -0.1}, "simpo_gamma"),
    ({"dpop_lambda": -1.0}, "dpop_lambda"), ({"rpo_alpha": -1.0}, "rpo_alpha"),
    ({"loss_type": "kto"}, "allowed values"),
])
def test_config_rejects_bad_settings_once_at_construction(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        PreferenceLossConfig(**settings)


def test_every_loss_type_has_a_formula_and_the_reference_free_ones_are_named() -> None:
    one = torch.ones(1)
    for loss_type in LOSS_TYPES:
        config = PreferenceLossConfig(loss_type)
        losses, _, _ = preference_loss(-one, -2 * one, -one, -one, one, config)
        assert torch.isfinite(losses).all()
        assert config.reference_free == (loss_type == "simpo")


def test_disagreement_counts_match_the_log_likelihood_counts() -> None:
    x, chosen, rejected = preference_problem()
    valid = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(0)) > 0.2
    _, _, expected = mask_log_likelihoods(torch.randn(4, 3, 12, 12), chosen, rejected, valid)
    assert torch.equal(disagreement_counts(chosen, rejected, valid), expected)
    _, chosen_r, rejected_r = preference_problem(regions=True)
    _, _, expected_r = mask_log_likelihoods(torch.randn(4, 2, 12, 12), chosen_r, rejected_r, regions=True)
    assert torch.equal(disagreement_counts(chosen_r, rejected_r, regions=True), expected_r)
