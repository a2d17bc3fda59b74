"""The preference losses: mask log-likelihoods, DPO and its variants as pure functions on tensors.

Reference formulation (``docs/method.md``): for a pair (y+, y-) on the same patch, with logits z,

    l(y) = sum over the disagreement voxels D = {i : y+_i != y-_i, i not ignored} of log p_z(y_i)
    r+   = beta / |D| * (l_policy(y+) - l_ref(y+)),   r- likewise
    L    = -log sigmoid(r+ - r-)                          ('sigmoid', DPO)

Voxels where y+ and y- agree cancel in l(y+) - l(y-), so summing over D only gives the same margin with less
rounding; dividing by |D| keeps the margin from shrinking towards zero with the patch size. Label training uses the
softmax likelihood, region training (sigmoid outputs) the Bernoulli likelihood of each region channel.

Beyond DPO (``docs/method.md`` gives the formulas and sources):

- :func:`simpo_loss`, reference-free (SimPO, Meng et al. 2024, as AMoPO uses it, arXiv 2506.07165):
  r+ = beta / |D| * l_policy(y+), r- likewise, L = -log sigmoid(r+ - r- - gamma);
- :func:`dpop_loss`, DPO-Positive (Pal et al. 2024, arXiv 2402.13228): L = -log sigmoid(r+ - r- - lambda *
  max(0, -r+)), which stops the preferred mask's likelihood from falling below the reference's, DPO's known failure
  on pairs that differ in few tokens (here: voxels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_mapo.method import LOSS_TYPES

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")  # the loss types of dpo_loss itself


def mask_log_likelihoods(
    logits: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    valid: torch.Tensor | None = None,
    regions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-likelihoods of two masks under ``logits``, summed over the voxels where the masks disagree.

    Args:
        logits: ``(N, C, *spatial)`` network output.
        chosen: Preferred masks: ``(N, *spatial)`` label maps, or ``(N, C, *spatial)`` booleans with ``regions``.
        rejected: Dispreferred masks, same layout as ``chosen``.
        valid: Optional ``(N, 1, *spatial)`` boolean mask of voxels that count (False where the ignore label is).
        regions: Whether the outputs are independent sigmoid regions instead of softmax classes.

    Returns:
        ``(chosen_logps, rejected_logps, num_disagree)``, each of shape ``(N,)``; ``num_disagree`` counts voxels
        (voxel-region entries with ``regions``).

    Raises:
        ValueError: Shapes that do not fit together.
    """
    if regions:
        if chosen.shape != logits.shape or rejected.shape != logits.shape:
            raise ValueError(f"Region masks must have the logits' shape {tuple(logits.shape)}, got "
                             f"{tuple(chosen.shape)} and {tuple(rejected.shape)}.")
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        chosen_vox = torch.where(chosen.bool(), log_p, log_not_p)
        rejected_vox = torch.where(rejected.bool(), log_p, log_not_p)
    else:
        if chosen.shape != logits.shape[:1] + logits.shape[2:] or rejected.shape != chosen.shape:
            raise ValueError(f"Label masks must have shape {(logits.shape[0], *logits.shape[2:])}, got "
                             f"{tuple(chosen.shape)} and {tuple(rejected.shape)}.")
        log_probs = torch.log_softmax(logits, dim=1)
        chosen_vox = log_probs.gather(1, chosen.long().unsqueeze(1))
        rejected_vox = log_probs.gather(1, rejected.long().unsqueeze(1))
    weight = _disagreement(chosen, rejected, valid, regions).to(chosen_vox.dtype)
    dims = tuple(range(1, chosen_vox.ndim))
    return (chosen_vox * weight).sum(dims), (rejected_vox * weight).sum(dims), weight.sum(dims)


def _disagreement(chosen: torch.Tensor, rejected: torch.Tensor, valid: torch.Tensor | None,
                  regions: bool) -> torch.Tensor:
    """Where two masks differ, as ``(N, 1 or R, *spatial)`` booleans, ignored voxels left out."""
    disagree = chosen.bool() != rejected.bool() if regions else (chosen != rejected).unsqueeze(1)
    return disagree & valid.bool() if valid is not None else disagree


def disagreement_counts(chosen: torch.Tensor, rejected: torch.Tensor, valid: torch.Tensor | None = None,
                        regions: bool = False) -> torch.Tensor:
    """|D| per pair, as :func:`mask_log_likelihoods` counts it, without logits (``(N,)`` float)."""
    disagree = _disagreement(chosen, rejected, valid, regions)
    return disagree.flatten(1).sum(1).float()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    num_disagree: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preference loss per pair, with the implicit rewards (TRL's ``dpo_loss`` layout).

    Args:
        policy_chosen_logps: ``(N,)`` log-likelihood of y+ under the policy (from :func:`mask_log_likelihoods`).
        policy_rejected_logps: ``(N,)`` log-likelihood of y- under the policy.
        reference_chosen_logps: ``(N,)`` log-likelihood of y+ under the frozen reference.
        reference_rejected_logps: ``(N,)`` log-likelihood of y- under the frozen reference.
        num_disagree: ``(N,)`` number of disagreement voxels |D| (clamped to at least 1).
        beta: Temperature, > 0.
        loss_type: ``'sigmoid'`` (DPO), ``'ipo'`` (squared distance of the normalized log-ratio margin to
            1 / (2 beta)) or ``'hinge'`` (``relu(1 - margin)``).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(N,)``; the rewards are detached.

    Raises:
        ValueError: ``beta <= 0`` or an unknown ``loss_type``.
    """
    if not beta > 0:  # NaN fails too
        raise ValueError(f"beta must be > 0, got {beta}.")
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; allowed values: {list(DPO_LOSS_TYPES)} (SimPO and "
                         f"DPO-Positive: simpo_loss, dpop_loss).")
    scale = 1.0 / num_disagree.clamp(min=1).to(policy_chosen_logps.dtype)
    chosen_log_ratio = (policy_chosen_logps - reference_chosen_logps) * scale
    rejected_log_ratio = (policy_rejected_logps - reference_rejected_logps) * scale
    margin = chosen_log_ratio - rejected_log_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * margin)
    else:  # ipo
        losses = (margin - 1.0 / (2.0 * beta)) ** 2
    return losses, (beta * chosen_log_ratio).detach(), (beta * rejected_log_ratio).detach()


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    num_disagree: torch.Tensor,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference-free preference loss per pair: the |D|-averaged log-likelihood margin against a target margin.

    Args:
        policy_chosen_logps: ``(N,)`` log-likelihood of y+ under the policy over D.
        policy_rejected_logps: ``(N,)`` the same for y-.
        num_disagree: ``(N,)`` |D| (clamped to at least 1).
        beta: Scale of the rewards, > 0.
        gamma: Target reward margin, >= 0.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``: ``-log sigmoid(r+ - r- - gamma)`` with
        ``r = beta / |D| * l_policy``; the rewards are detached.

    Raises:
        ValueError: ``beta <= 0`` or ``gamma < 0``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}.")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    scale = beta / num_disagree.clamp(min=1).to(policy_chosen_logps.dtype)
    chosen_rewards, rejected_rewards = policy_chosen_logps * scale, policy_rejected_logps * scale
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def dpop_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    num_disagree: torch.Tensor,
    beta: float,
    penalty: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-Positive per pair: DPO with a penalty once y+ becomes less likely than under the reference.

    Args:
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
            num_disagree: As for :func:`dpo_loss`.
        beta: Temperature, > 0.
        penalty: lambda, >= 0 (0 gives DPO).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``: ``-log sigmoid(r+ - r- - lambda * max(0, -r+))`` with DPO's
        rewards r; the rewards are detached.

    Raises:
        ValueError: ``beta <= 0`` or ``penalty < 0``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}.")
    if not penalty >= 0:
        raise ValueError(f"penalty must be >= 0, got {penalty}.")
    scale = beta / num_disagree.clamp(min=1).to(policy_chosen_logps.dtype)
    chosen_rewards = (policy_chosen_logps - reference_chosen_logps) * scale  # r+ (with its gradient)
    rejected_rewards = (policy_rejected_logps - reference_rejected_logps) * scale
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - penalty * torch.relu(-chosen_rewards))
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


class DPOLoss(nn.Module):
    """:func:`dpo_loss` with its arguments checked once, at construction.

    Args:
        beta: Temperature, > 0.
        loss_type: One of ``'sigmoid'``, ``'ipo'``, ``'hinge'`` (:func:`dpo_loss`), ``'simpo'``
            (:func:`simpo_loss`, reference-free) or ``'dpop'`` (:func:`dpop_loss`).
        regions: Whether logits are sigmoid regions (Bernoulli likelihood) rather than softmax classes.
        simpo_gamma: SimPO's target margin, >= 0.
        dpop_penalty: DPO-Positive's lambda, >= 0.

    Raises:
        ValueError: ``beta <= 0``, an unknown ``loss_type``, or a negative gamma or lambda.
    """

    def __init__(self, beta: float = 1.0, loss_type: str = "sigmoid", regions: bool = False,
                 simpo_gamma: float = 0.0, dpop_penalty: float = 0.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}.")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {loss_type!r}; allowed values: {list(LOSS_TYPES)}.")
        if not (simpo_gamma >= 0 and dpop_penalty >= 0):
            raise ValueError(f"simpo_gamma and dpop_penalty must be >= 0, got {simpo_gamma} and {dpop_penalty}.")
        self.beta, self.loss_type, self.regions = float(beta), loss_type, regions
        self.simpo_gamma, self.dpop_penalty = float(simpo_gamma), float(dpop_penalty)

    def forward(
        self,
        logits: torch.Tensor,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(losses, chosen_rewards, rejected_rewards)`` for a batch of pairs (see :func:`dpo_loss`).

        The term is computed in float32 even inside an autocast region (nnU-Net trains with float16/bfloat16 autocast
        on GPUs): the log-likelihoods are sums over many voxels, and their differences are small.
        """
        with torch.autocast(logits.device.type, enabled=False):
            return self._float32_forward(logits.float(), chosen, rejected, reference_chosen_logps.float(),
                                         reference_rejected_logps.float(), valid)

    def _float32_forward(self, logits: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                         reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
                         valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen_logps, rejected_logps, num_disagree = mask_log_likelihoods(
            logits, chosen, rejected, valid, self.regions
        )
        if self.loss_type == "simpo":
            return simpo_loss(chosen_logps, rejected_logps, num_disagree, self.beta, self.simpo_gamma)
        if self.loss_type == "dpop":
            return dpop_loss(chosen_logps, rejected_logps, reference_chosen_logps, reference_rejected_logps,
                             num_disagree, self.beta, self.dpop_penalty)
        return dpo_loss(chosen_logps, rejected_logps, reference_chosen_logps, reference_rejected_logps,
                        num_disagree, self.beta, self.loss_type)
