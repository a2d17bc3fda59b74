"""The preference losses: mask log-likelihoods, and every preference loss as a pure function on tensors.

Notation (``docs/method.md``): for a pair (y+, y-) on one patch with logits z, D the voxels where y+ and y- differ
(ignored voxels left out) and l(y) the log-likelihood of mask y summed over D,

    h+ = (l_policy(y+) - l_ref(y+)) / |D|     the per-voxel log-ratio of y+, in nats per disagreement voxel
    h- likewise,  h = h+ - h-                 the pair's margin, in nats per disagreement voxel
    r+ = beta h+,  r- = beta h-               the implicit rewards (TRL's rewards/chosen, rewards/rejected)

Voxels where y+ and y- agree cancel in l(y+) - l(y-), so summing over D gives the same margin with less rounding;
dividing by |D| makes the margin a per-voxel quantity. Labels use the softmax likelihood, regions (sigmoid outputs)
the Bernoulli likelihood of each region channel. Reference-free losses (SimPO) take l_ref = 0.

The losses, each a function of the margin (``docs/method.md`` gives sources; "optimum" is the margin at which the
loss stops pulling):

========================  =============================================================  ========================
type                      loss per pair                                                  optimum h*
========================  =============================================================  ========================
``sigmoid`` (DPO)         -log sigmoid(beta h)                                           none (grows without bound)
``cdpo`` (robust DPO)     -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)      ln((1 - eps) / eps) / beta
``ipo``                   (h - 1 / (2 beta))^2                                           1 / (2 beta)
``hinge`` (SLiC)          relu(1 - beta h)                                               any h >= 1 / beta
``target_margin``         relu(m - h)^2 / m^2 (squared hinge, m in nats per voxel)       any h >= m
``simpo`` (ref.-free)     -log sigmoid(beta (l(y+) - l(y-)) / |D| - gamma)               none
``dpop`` (DPO-Positive)   -log sigmoid(beta h - lambda relu(-beta h+))                   none
``rpo``                   -log sigmoid(beta h) - alpha l_policy(y+) / |D|                none
========================  =============================================================  ========================

:class:`PreferenceLossConfig` validates a loss's settings once; :func:`preference_loss` computes it (TRL's
``dpo_loss`` layout: losses and the detached rewards); :class:`PreferenceLoss` is the module the trainer uses
(log-likelihoods from logits, float32 under autocast).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_mapo.method import LOSS_TYPES, REFERENCE_FREE_LOSS_TYPES

DEFAULT_BETA = 1.0  # the trainer's default (every default of the config is the trainer's; a test checks them)


@dataclass(frozen=True)
class PreferenceLossConfig:
    """One preference loss and its settings, checked once at construction.

    Args:
        loss_type: One of :data:`nnunetv2_mapo.method.LOSS_TYPES` (table in the module docstring).
        beta: Temperature, > 0.
        label_smoothing: cDPO's epsilon, in (0, 0.5) (``cdpo`` only): the assumed share of flipped preferences.
        target_margin: m, the margin in nats per disagreement voxel at which ``target_margin`` stops, > 0.
        simpo_gamma: SimPO's target reward margin, >= 0.
        dpop_lambda: DPO-Positive's penalty, >= 0.
        rpo_alpha: RPO's weight of the preferred mask's per-voxel negative log-likelihood, >= 0.

    Raises:
        ValueError: An unknown ``loss_type`` (the message lists the allowed ones) or a value out of its range.
    """

    loss_type: str = "cdpo"
    beta: float = DEFAULT_BETA
    label_smoothing: float = 0.1
    target_margin: float = 1.0
    simpo_gamma: float = 0.5
    dpop_lambda: float = 10.0
    rpo_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {self.loss_type!r}; allowed values: {list(LOSS_TYPES)}.")
        checks = {
            "beta": (self.beta > 0, "> 0"),
            "label_smoothing": (0 < self.label_smoothing < 0.5, "in (0, 0.5)"),
            "target_margin": (self.target_margin > 0, "> 0"),
            "simpo_gamma": (self.simpo_gamma >= 0, ">= 0"),
            "dpop_lambda": (self.dpop_lambda >= 0, ">= 0"),
            "rpo_alpha": (self.rpo_alpha >= 0, ">= 0"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:  # NaN fails every comparison, so it lands here too
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)}.")

    @property
    def reference_free(self) -> bool:
        """Whether the loss needs no reference log-likelihoods (the round skips its reference pass)."""
        return self.loss_type in REFERENCE_FREE_LOSS_TYPES

    @property
    def optimum_margin(self) -> float:
        """h*, the margin in nats per disagreement voxel beyond which the loss no longer pulls (inf: none)."""
        return {
            "cdpo": math.log((1 - self.label_smoothing) / self.label_smoothing) / self.beta,
            "ipo": 1 / (2 * self.beta),
            "hinge": 1 / self.beta,
            "target_margin": self.target_margin,
        }.get(self.loss_type, math.inf)

    @property
    def start_slope(self) -> float:
        """|dL/dh| at h = 0, where every round starts (policy = reference): what the gradient-sized term divides
        by, so that its gradient at a round's start does not depend on beta or the loss type. SimPO has no
        reference, so it takes DPO's beta / 2; RPO its DPO part's."""
        beta = self.beta
        return {
            "cdpo": beta * (1 - 2 * self.label_smoothing) / 2,
            "ipo": 1 / beta,
            "hinge": beta,
            "target_margin": 2 / self.target_margin,
        }.get(self.loss_type, beta / 2)


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


# Each formula maps (h+, h-, l_policy(y+) / |D|, config) to the per-pair losses; h+ and h- are the per-voxel
# log-ratios (for SimPO, with l_ref = 0, the per-voxel log-likelihoods).
Formula = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PreferenceLossConfig], torch.Tensor]


def _sigmoid(chosen: torch.Tensor, rejected: torch.Tensor, _: torch.Tensor, c: PreferenceLossConfig) -> torch.Tensor:
    return -F.logsigmoid(c.beta * (chosen - rejected))


def _cdpo(chosen: torch.Tensor, rejected: torch.Tensor, _: torch.Tensor, c: PreferenceLossConfig) -> torch.Tensor:
    logits = c.beta * (chosen - rejected)
    return -(1 - c.label_smoothing) * F.logsigmoid(logits) - c.label_smoothing * F.logsigmoid(-logits)


def _ipo(chosen: torch.Tensor, rejected: torch.Tensor, _: torch.Tensor, c: PreferenceLossConfig) -> torch.Tensor:
    return (chosen - rejected - 1 / (2 * c.beta)) ** 2


def _hinge(chosen: torch.Tensor, rejected: torch.Tensor, _: torch.Tensor, c: PreferenceLossConfig) -> torch.Tensor:
    return torch.relu(1 - c.beta * (chosen - rejected))


def _target_margin(chosen: torch.Tensor, rejected: torch.Tensor, _: torch.Tensor,
                   c: PreferenceLossConfig) -> torch.Tensor:
    return (torch.relu(c.target_margin - (chosen - rejected)) / c.target_margin) ** 2


def _simpo(chosen: torch.Tensor, rejected: torch.Tensor, _: torch.Tensor, c: PreferenceLossConfig) -> torch.Tensor:
    return -F.logsigmoid(c.beta * (chosen - rejected) - c.simpo_gamma)


def _dpop(chosen: torch.Tensor, rejected: torch.Tensor, _: torch.Tensor, c: PreferenceLossConfig) -> torch.Tensor:
    return -F.logsigmoid(c.beta * (chosen - rejected) - c.dpop_lambda * torch.relu(-c.beta * chosen))


def _rpo(chosen: torch.Tensor, rejected: torch.Tensor, chosen_policy: torch.Tensor,
         c: PreferenceLossConfig) -> torch.Tensor:
    return -F.logsigmoid(c.beta * (chosen - rejected)) - c.rpo_alpha * chosen_policy


FORMULAS: dict[str, Formula] = {"sigmoid": _sigmoid, "cdpo": _cdpo, "ipo": _ipo, "hinge": _hinge,
                                "target_margin": _target_margin, "simpo": _simpo, "dpop": _dpop, "rpo": _rpo}


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    num_disagree: torch.Tensor,
    config: PreferenceLossConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preference loss per pair, with the implicit rewards (TRL's ``dpo_loss`` layout).

    Args:
        policy_chosen_logps: ``(N,)`` l_policy(y+) over D (from :func:`mask_log_likelihoods`).
        policy_rejected_logps: ``(N,)`` l_policy(y-).
        reference_chosen_logps: ``(N,)`` l_ref(y+) (ignored by reference-free losses).
        reference_rejected_logps: ``(N,)`` l_ref(y-).
        num_disagree: ``(N,)`` |D| (clamped to at least 1).
        config: The loss and its settings.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(N,)``: the losses of the module docstring's table,
        and r+ = beta h+, r- = beta h- (detached).
    """
    per_voxel = 1.0 / num_disagree.clamp(min=1).to(policy_chosen_logps.dtype)
    chosen_policy = policy_chosen_logps * per_voxel
    if config.reference_free:
        chosen, rejected = chosen_policy, policy_rejected_logps * per_voxel
    else:
        chosen = (policy_chosen_logps - reference_chosen_logps) * per_voxel
        rejected = (policy_rejected_logps - reference_rejected_logps) * per_voxel
    losses = FORMULAS[config.loss_type](chosen, rejected, chosen_policy, config)
    return losses, (config.beta * chosen).detach(), (config.beta * rejected).detach()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    num_disagree: torch.Tensor,
    beta: float = DEFAULT_BETA,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`preference_loss` of ``loss_type`` at ``beta`` with the other settings at their defaults.

    Raises:
        ValueError: As :class:`PreferenceLossConfig`.
    """
    return preference_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                           reference_rejected_logps, num_disagree, PreferenceLossConfig(loss_type, beta))


class PreferenceLoss(nn.Module):
    """The preference loss of a :class:`PreferenceLossConfig` on logits and masks.

    Args:
        config: The loss and its settings (already validated).
        regions: Whether logits are sigmoid regions (Bernoulli likelihood) rather than softmax classes.
    """

    def __init__(self, config: PreferenceLossConfig | None = None, regions: bool = False) -> None:
        super().__init__()
        self.config = config or PreferenceLossConfig()
        self.regions = regions

    @property
    def loss_type(self) -> str:
        return self.config.loss_type

    @property
    def beta(self) -> float:
        return self.config.beta

    def forward(
        self,
        logits: torch.Tensor,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(losses, chosen_rewards, rejected_rewards, num_disagree)`` for a batch of pairs.

        The term is computed in float32 even inside an autocast region (nnU-Net trains with float16/bfloat16 autocast
        on GPUs): the log-likelihoods are sums over many voxels, and their differences are small.
        """
        with torch.autocast(logits.device.type, enabled=False):
            chosen_logps, rejected_logps, num_disagree = mask_log_likelihoods(
                logits.float(), chosen, rejected, valid, self.regions)
            losses, chosen_rewards, rejected_rewards = preference_loss(
                chosen_logps, rejected_logps, reference_chosen_logps.float(), reference_rejected_logps.float(),
                num_disagree, self.config)
        return losses, chosen_rewards, rejected_rewards, num_disagree
