"""Preference objectives beyond Dice: a boundary score for hypotheses, and adaptive weights over objectives.

``mapo_objectives = "dice+boundary"`` (``nnUNetTrainerMAPO_MultiObjective``) ranks each item's K hypotheses twice:
by Dice (overlap, :func:`~nnunetv2_mapo.method.scoring.mean_foreground_dice`) and by :func:`boundary_scores`, the
normalised surface Dice at a tolerance of one voxel on the patch (MONAI's ``compute_surface_dice``). Each objective
gives a (y+, y-) pair of its own, and the step's preference loss combines the pairs of each objective with weights
that follow from the policy's own margins (:func:`objective_weights`):

    m_i     = r+_i - r-_i                     the reward margin of pair i (DPO's implicit rewards, or SimPO's)
    mu_k    = mean of m_i over the step's pairs of objective k
    s       = standard deviation of all the step's margins
    p_k     = Phi(mu_k / s)                   a Gaussian model of the margins: how likely the policy ranks a pair of
                                              objective k the right way
    alpha_k = (1 - p_k) / sum_j (1 - p_j)     the objective whose preferences are met least gets the most weight
    L       = sum_k alpha_k * mean over the pairs of objective k of loss_i      (alpha without gradient)

This is our formulation. AMoPO (Liu et al., ACL 2025, arXiv 2506.07165) combines per-objective log-sigmoid terms with
adaptive weights drawn from a Gaussian model of the generation likelihoods, with no reward model; its exact weight
rule was not available to us, so the rule above is ours, in that spirit, and not AMoPO's.
"""

from __future__ import annotations

import warnings

import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_mapo.method import OBJECTIVE_SETS
from nnunetv2_mapo.method.scoring import one_hot_masks


def objectives_of(setting: str) -> tuple[str, ...]:
    """The objectives named by a ``mapo_objectives`` value.

    Args:
        setting: One of :data:`~nnunetv2_mapo.method.OBJECTIVE_SETS`.

    Returns:
        ``('dice',)``, ``('dice', 'boundary')`` or ``('boundary',)``.

    Raises:
        ValueError: Another value.
    """
    if setting not in OBJECTIVE_SETS:
        raise ValueError(f"Unknown objectives {setting!r}; allowed values: {list(OBJECTIVE_SETS)}.")
    return tuple(setting.split("+"))


def boundary_scores(
    hypotheses: torch.Tensor,
    reference: torch.Tensor,
    valid: torch.Tensor | None,
    label_manager: LabelManager,
    tolerance: float = 1.0,
) -> torch.Tensor:
    """Mean foreground normalised surface Dice of K hypotheses per item, in voxels (MONAI).

    Ignored voxels count as background in both masks. A class absent from both masks counts as perfect (1), as in
    the Dice of :mod:`.scoring`.

    Args:
        hypotheses: ``(N, K, ...)`` hard masks (:func:`~nnunetv2_mapo.method.scoring.logits_to_masks` layout).
        reference: ``(N, ...)`` from :func:`~nnunetv2_mapo.method.scoring.split_target`.
        valid: ``(N, 1, *spatial)`` or None.
        label_manager: The dataset's label manager.
        tolerance: The surface tolerance, in voxels (> 0).

    Returns:
        ``(N, K)`` float scores in [0, 1], on the hypotheses' device.

    Raises:
        ValueError: A tolerance <= 0.
    """
    from monai.metrics import compute_surface_dice  # MONAI's import is slow; rounds need it, inference does not

    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}.")
    n, k = hypotheses.shape[:2]
    regions = label_manager.has_regions
    channels = label_manager.num_segmentation_heads
    predicted = one_hot_masks(hypotheses.reshape(n * k, *hypotheses.shape[2:]), channels, regions)
    truth = one_hot_masks(reference, channels, regions).repeat_interleave(k, 0)
    if valid is not None:
        keep = valid.repeat_interleave(k, 0).float()
        predicted, truth = predicted * keep, truth * keep
    if not regions:
        predicted, truth = predicted[:, 1:], truth[:, 1:]
    with warnings.catch_warnings():  # MONAI warns about every empty mask; both empty is handled below
        warnings.simplefilter("ignore")
        scores = compute_surface_dice(predicted.cpu(), truth.cpu(), [float(tolerance)] * predicted.shape[1],
                                      include_background=True)
    scores = torch.nan_to_num(scores.float(), nan=1.0)
    return scores.mean(1).reshape(n, k).to(hypotheses.device)


def objective_weights(margins: torch.Tensor, objective: torch.Tensor, num_objectives: int) -> torch.Tensor:
    """The adaptive weights alpha_k of the module docstring, without gradient.

    Args:
        margins: ``(P,)`` reward margins r+ - r- of the step's pairs.
        objective: ``(P,)`` integer objective index of each pair, in ``[0, num_objectives)``.
        num_objectives: The number of objectives (>= 1).

    Returns:
        ``(num_objectives,)`` weights that sum to 1; 0 for an objective without pairs in the step. With equal
        margins everywhere (a round's first step, policy = reference) the objectives with pairs weigh the same.

    Raises:
        ValueError: ``num_objectives`` < 1, or shapes that differ.
    """
    if num_objectives < 1:
        raise ValueError(f"num_objectives must be >= 1, got {num_objectives}.")
    if margins.shape != objective.shape or margins.ndim != 1:
        raise ValueError(f"margins and objective must both be (P,), got {tuple(margins.shape)} and "
                         f"{tuple(objective.shape)}.")
    margins = margins.detach().float()
    one_hot = torch.nn.functional.one_hot(objective.long(), num_objectives).float()  # (P, K)
    counts = one_hot.sum(0)
    means = (one_hot * margins[:, None]).sum(0) / counts.clamp(min=1)
    spread = margins.std(unbiased=False) if margins.numel() > 1 else margins.new_zeros(())
    z = torch.where(spread > 1e-12, means / spread.clamp(min=1e-12), torch.zeros_like(means))
    unmet = 1.0 - torch.distributions.Normal(0.0, 1.0).cdf(z)  # 1 - p_k, in (0, 1)
    unmet = torch.where(counts > 0, unmet.clamp(min=1e-6), torch.zeros_like(unmet))
    return unmet / unmet.sum().clamp(min=1e-12)


def combine_objectives(losses: torch.Tensor, margins: torch.Tensor, objective: torch.Tensor,
                       num_objectives: int) -> torch.Tensor:
    """``sum_k alpha_k * mean of the losses of objective k`` (the module docstring's L).

    Args:
        losses: ``(P,)`` per-pair preference losses (with gradient).
        margins: ``(P,)`` reward margins of the same pairs.
        objective: ``(P,)`` objective index of each pair.
        num_objectives: The number of objectives.

    Returns:
        A 0-d tensor; with one objective, ``losses.mean()``.
    """
    weights = objective_weights(margins, objective, num_objectives)
    one_hot = torch.nn.functional.one_hot(objective.long(), num_objectives).to(losses.dtype)
    per_objective = (one_hot * losses[:, None]).sum(0) / one_hot.sum(0).clamp(min=1)
    return (weights.to(losses.dtype) * per_objective).sum()
