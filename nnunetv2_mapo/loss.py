"""nnU-Net's Dice+CE (with deep supervision) plus ``weight`` x the preference loss, as one loss module.

nnU-Net's ``train_step`` calls ``self.network(data)`` and ``self.loss(output, target)``. The trainer appends the
step's preference-pair patches to ``data`` and hands the pairs to this module (:meth:`MAPOLoss.set_pairs`), so the
pairs share the batch's single forward and backward pass, and nnU-Net's autocast, gradient scaling, clipping and DDP
all apply unchanged. This module splits the output again: the batch rows get nnU-Net's loss against ``target``, the
appended rows the preference loss on the full-resolution output. Validation steps set no pairs and get Dice+CE only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nnunetv2_mapo.dpo import DPOLoss
from nnunetv2_mapo.preference_set import PreferenceBatch

STEP_STAT_KEYS = ("mapo_dpo_loss", "mapo_rewards_chosen", "mapo_rewards_rejected", "mapo_reward_accuracy",
                  "mapo_reward_margin", "mapo_skipped_nonfinite")


class MAPOLoss(nn.Module):
    """Segmentation loss + ``weight`` x preference loss.

    Args:
        segmentation_loss: nnU-Net's loss (``DeepSupervisionWrapper`` around Dice+CE or Dice+BCE).
        preference_loss: The :class:`~nnunetv2_mapo.dpo.DPOLoss`.
        weight: lambda, >= 0.

    Raises:
        ValueError: A negative weight.
    """

    def __init__(self, segmentation_loss: nn.Module, preference_loss: DPOLoss, weight: float) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        self.segmentation_loss = segmentation_loss
        self.preference_loss = preference_loss
        self.weight = float(weight)
        self._pairs: PreferenceBatch | None = None
        self.last_stats: dict[str, float] = self.inactive_stats()

    @staticmethod
    def inactive_stats() -> dict[str, float]:
        """Step statistics of a step without pairs (NaN, so that epoch means skip them)."""
        return {key: math.nan for key in STEP_STAT_KEYS}

    def set_pairs(self, pairs: PreferenceBatch | None) -> None:
        """Registers the pairs whose patches are the last ``len(pairs)`` rows of the next forward pass."""
        self._pairs = pairs

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]):
        pairs, self._pairs = self._pairs, None
        if pairs is None or len(pairs) == 0:  # output[:-0] would be empty
            self.last_stats = self.inactive_stats()
            return self.segmentation_loss(output, target)
        count = len(pairs)
        if isinstance(output, (list, tuple)):
            segmentation_output = [o[:-count] for o in output]
            pair_logits = output[0][-count:]
        else:
            segmentation_output, pair_logits = output[:-count], output[-count:]
        segmentation = self.segmentation_loss(segmentation_output, target)
        losses, chosen_rewards, rejected_rewards = self.preference_loss(
            pair_logits, pairs.chosen, pairs.rejected, pairs.reference_chosen_logps, pairs.reference_rejected_logps,
            pairs.valid,
        )
        preference = losses.mean()
        if not torch.isfinite(preference):
            # A non-finite preference term never reaches the optimizer: this step trains on Dice+CE alone.
            self.last_stats = self.inactive_stats() | {"mapo_skipped_nonfinite": 1.0}
            return segmentation
        self.last_stats = {
            "mapo_dpo_loss": preference.item(),
            "mapo_rewards_chosen": chosen_rewards.mean().item(),
            "mapo_rewards_rejected": rejected_rewards.mean().item(),
            "mapo_reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
            "mapo_reward_margin": (chosen_rewards - rejected_rewards).mean().item(),
            "mapo_skipped_nonfinite": 0.0,
        }
        return segmentation + self.weight * preference
