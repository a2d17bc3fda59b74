"""Scoring dropout hypotheses against the ground truth and choosing preference pairs.

Dice follows nnU-Net's label conventions, as in ``nnUNetTrainer.validation_step``: argmax + one-hot for labels,
``sigmoid > 0.5`` for regions, the ignore label masked out, background dropped, counts from nnU-Net's
``get_tp_fp_fn_tn``. A class absent from both the hypothesis and the ground truth counts as perfect (Dice 1).
"""

from __future__ import annotations

import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.utilities.label_handling.label_handling import LabelManager


def split_target(target: torch.Tensor, label_manager: LabelManager) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Splits a training-format target into the mask to score against and the valid-voxel mask.

    Args:
        target: ``(N, 1, *spatial)`` label map, or ``(N, R[+1], *spatial)`` region channels (the last channel marks
            ignored voxels when the dataset has an ignore label), as produced by nnU-Net's transforms.
        label_manager: The dataset's label manager.

    Returns:
        ``(reference, valid)``: ``reference`` is ``(N, *spatial)`` int64 labels (ignored voxels set to 0) or
        ``(N, R, *spatial)`` bool regions; ``valid`` is ``(N, 1, *spatial)`` bool, or None without ignore label.
    """
    if label_manager.has_regions:
        valid = None
        if label_manager.has_ignore_label:
            valid = ~target[:, -1:].bool()
            target = target[:, :-1]
        return target.bool(), valid
    labels = target[:, 0].long()
    valid = None
    if label_manager.has_ignore_label:
        valid = (labels != label_manager.ignore_label).unsqueeze(1)
        labels = torch.where(valid[:, 0], labels, torch.zeros_like(labels))
    return labels, valid


def logits_to_masks(logits: torch.Tensor, label_manager: LabelManager) -> torch.Tensor:
    """Hard masks from logits: ``(N, *spatial)`` uint8/int16 labels by argmax, or ``(N, R, *spatial)`` bool regions."""
    if label_manager.has_regions:
        return logits > 0  # sigmoid(z) > 0.5
    labels = logits.argmax(1)
    return labels.to(torch.uint8 if logits.shape[1] <= 256 else torch.int16)


def one_hot_masks(masks: torch.Tensor, num_channels: int, regions: bool) -> torch.Tensor:
    """``(N, C, *spatial)`` float one-hot of label maps ``(N, *spatial)``, or region masks as floats."""
    if regions:
        return masks.float()
    out = torch.zeros((masks.shape[0], num_channels, *masks.shape[1:]), device=masks.device)
    return out.scatter_(1, masks.long().unsqueeze(1), 1)


def mean_foreground_dice(
    hypotheses: torch.Tensor,
    reference: torch.Tensor,
    valid: torch.Tensor | None,
    label_manager: LabelManager,
) -> torch.Tensor:
    """Mean foreground Dice of K hypotheses per item.

    Args:
        hypotheses: ``(N, K, ...)`` hard masks in the layout of :func:`logits_to_masks`.
        reference: ``(N, ...)`` from :func:`split_target`.
        valid: ``(N, 1, *spatial)`` or None.
        label_manager: The dataset's label manager.

    Returns:
        ``(N, K)`` float scores in [0, 1].
    """
    n, k = hypotheses.shape[:2]
    regions = label_manager.has_regions
    num_channels = label_manager.num_segmentation_heads
    flat = hypotheses.reshape(n * k, *hypotheses.shape[2:])
    ref = reference.repeat_interleave(k, 0)
    pred_onehot = one_hot_masks(flat, num_channels, regions)
    mask = valid.repeat_interleave(k, 0).float() if valid is not None else None
    axes = tuple(range(2, pred_onehot.ndim))
    tp, fp, fn, _ = get_tp_fp_fn_tn(pred_onehot, ref.float() if regions else ref, axes=axes, mask=mask)
    denominator = 2 * tp + fp + fn
    dice = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1e-8), torch.ones_like(tp))
    if not regions:
        dice = dice[:, 1:]  # background
    return dice.mean(1).reshape(n, k)


def select_pairs(scores: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chooses the preferred and dispreferred hypothesis per item.

    y+ is the best-scoring hypothesis. Among the hypotheses scoring at most ``best - margin`` (other than y+
    itself), y- is the lowest-scoring one. Items without such a hypothesis have no pair.

    Args:
        scores: ``(N, K)`` Dice per hypothesis.
        margin: tau in [0, 1].

    Returns:
        ``(chosen_index, rejected_index, has_pair)``, each ``(N,)``.
    """
    best_score, chosen = scores.max(1)
    eligible = scores <= (best_score.unsqueeze(1) - margin)
    eligible.scatter_(1, chosen.unsqueeze(1), False)
    masked = torch.where(eligible, scores, torch.full_like(scores, float("inf")))
    rejected = masked.argmin(1)
    return chosen, rejected, eligible.any(1)
