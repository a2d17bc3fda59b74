"""The preference loss: mask log-likelihoods and DPO as pure functions on tensors.

Reference formulation (``docs/method.md``): for a pair (y+, y-) on the same patch, with logits z,

    l(y) = sum over the disagreement voxels D = {i : y+_i != y-_i, i not ignored} of log p_z(y_i)
    r+   = beta / |D| * (l_policy(y+) - l_ref(y+)),   r- likewise
    L    = -log sigmoid(r+ - r-)                          ('sigmoid', DPO)

Voxels where y+ and y- agree cancel in l(y+) - l(y-), so summing over D only gives the same margin with less
rounding; dividing by |D| keeps the margin from shrinking towards zero with the patch size. Label training uses the
softmax likelihood, region training (sigmoid outputs) the Bernoulli likelihood of each region channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_mapo.method import LOSS_TYPES


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
        disagree = chosen.bool() != rejected.bool()
    else:
        if chosen.shape != logits.shape[:1] + logits.shape[2:] or rejected.shape != chosen.shape:
            raise ValueError(f"Label masks must have shape {(logits.shape[0], *logits.shape[2:])}, got "
                             f"{tuple(chosen.shape)} and {tuple(rejected.shape)}.")
        log_probs = torch.log_softmax(logits, dim=1)
        chosen_vox = log_probs.gather(1, chosen.long().unsqueeze(1))
        rejected_vox = log_probs.gather(1, rejected.long().unsqueeze(1))
        disagree = (chosen != rejected).unsqueeze(1)
    if valid is not None:
        disagree = disagree & valid.bool()
    weight = disagree.to(chosen_vox.dtype)
    dims = tuple(range(1, chosen_vox.ndim))
    return (chosen_vox * weight).sum(dims), (rejected_vox * weight).sum(dims), weight.sum(dims)


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
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss_type {loss_type!r}; allowed values: {list(LOSS_TYPES)}.")
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


class DPOLoss(nn.Module):
    """:func:`dpo_loss` with its arguments checked once, at construction.

    Args:
        beta: Temperature, > 0.
        loss_type: One of ``'sigmoid'``, ``'ipo'``, ``'hinge'``.
        regions: Whether logits are sigmoid regions (Bernoulli likelihood) rather than softmax classes.

    Raises:
        ValueError: ``beta <= 0`` or an unknown ``loss_type``.
    """

    def __init__(self, beta: float = 1.0, loss_type: str = "sigmoid", regions: bool = False) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}.")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {loss_type!r}; allowed values: {list(LOSS_TYPES)}.")
        self.beta, self.loss_type, self.regions = float(beta), loss_type, regions

    def forward(
        self,
        logits: torch.Tensor,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(losses, chosen_rewards, rejected_rewards)`` for a batch of pairs (see :func:`dpo_loss`)."""
        chosen_logps, rejected_logps, num_disagree = mask_log_likelihoods(
            logits.float(), chosen, rejected, valid, self.regions
        )
        return dpo_loss(chosen_logps, rejected_logps, reference_chosen_logps, reference_rejected_logps,
                        num_disagree, self.beta, self.loss_type)
