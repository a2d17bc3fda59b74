"""A target without a label: the consensus of the network's hypotheses, and how confident it is.

On an unlabeled patch a round has the network's own prediction (dropout off) and its K dropout hypotheses. Their
voxel-wise majority vote is the consensus; the share of the candidates that vote for the consensus is the voxel's
agreement. A patch counts as confident when the mean agreement over the voxels that any candidate calls foreground
reaches a threshold: background that every candidate agrees on is left out of the mean, otherwise a small structure
in a large patch would always look confident. A patch where no candidate sees any foreground gives no target.
"""

from __future__ import annotations

import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_mapo.method.scoring import one_hot_masks


def consensus_target(candidates: torch.Tensor, label_manager: LabelManager,
                     confidence: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The majority vote of the candidates, its agreement and the confidence gate.

    Args:
        candidates: ``(N, M, ...)`` hard masks of M candidates per item in the layout of
            :func:`~nnunetv2_mapo.method.scoring.logits_to_masks` (labels ``(N, M, *spatial)`` or regions
            ``(N, M, R, *spatial)``).
        label_manager: The dataset's label manager.
        confidence: The mean agreement a patch needs, in (0, 1].

    Returns:
        ``(consensus, agreement, confident)``: the vote in the layout of
        :func:`~nnunetv2_mapo.method.scoring.split_target`'s reference (int64 labels ``(N, *spatial)``, ties to the
        lower label, or bool regions ``(N, R, *spatial)``, ties to background); the mean agreement per item over the
        voxels any candidate calls foreground ``(N,)`` (NaN where none does); and ``(N,)`` bool, True where that
        agreement is at least ``confidence``.

    Raises:
        ValueError: ``confidence`` outside (0, 1], or fewer than one candidate.
    """
    if not 0.0 < confidence <= 1.0:
        raise ValueError(f"confidence must be in (0, 1], got {confidence}.")
    n, m = candidates.shape[:2]
    if m < 1:
        raise ValueError("consensus_target needs at least one candidate per item.")
    regions = label_manager.has_regions
    flat = candidates.reshape(n * m, *candidates.shape[2:])
    votes = one_hot_masks(flat, label_manager.num_segmentation_heads, regions)
    votes = votes.reshape(n, m, *votes.shape[1:]).mean(1)  # (N, C, *spatial): share of candidates per class/region
    if regions:
        consensus = votes > 0.5
        agreement = torch.maximum(votes, 1 - votes).amin(1)  # the least certain region decides
        foreground = (votes > 0).any(1)
    else:
        consensus = votes.argmax(1)
        agreement = votes.amax(1)
        foreground = votes[:, 0] < 1  # some candidate calls the voxel foreground
    mean = foreground_mean(agreement, foreground)
    return consensus, mean, reaches(mean, confidence)


def foreground_mean(values: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` ``(N, *spatial)`` per item over its ``foreground`` voxels; NaN where it has none."""
    counted = foreground.flatten(1).float()
    return (values.flatten(1) * counted).sum(1) / counted.sum(1)


def reaches(mean: torch.Tensor, threshold: float) -> torch.Tensor:
    """Whether each item's :func:`foreground_mean` reaches ``threshold``; an item without foreground never does."""
    return torch.nan_to_num(mean, nan=-1.0) >= threshold
