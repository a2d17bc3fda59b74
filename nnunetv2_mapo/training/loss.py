"""nnU-Net's Dice+CE (with deep supervision) plus ``weight`` x the preference loss, as one loss module.

A training step with pairs appends the pairs' patches to the batch (:func:`append_pair_rows`), so that they share
the batch's single forward and backward pass and nnU-Net's autocast, gradient scaling, clipping and DDP all apply
unchanged. The loss gets the same pairs as an argument and splits the output again (:func:`split_pair_rows`): the
batch rows get nnU-Net's loss against ``target``, the pair rows the preference loss on the full-resolution output.
Both halves of that convention live in this module. Validation steps pass no pairs and get Dice+CE only.
Networks whose training and eval modes differ (BatchNorm, native dropout or DropPath) give the pair rows a forward
pass of their own in eval mode instead (:mod:`nnunetv2_mapo.method.train_eval`), and the loss gets their logits.

The term's size (``scale``): with ``'voxel_gradient'`` (the default) pair p enters as

    weight * |D_p| / (B |Omega|) * L_p / s

with B |Omega| the voxels (voxel-region entries) of the batch's full-resolution target and s the loss's slope at a
round's start (:attr:`~nnunetv2_mapo.method.preference_loss.PreferenceLossConfig.start_slope`). Since
d(l(y+) - l(y-)) / dz is +-1 on the logits of a disagreement voxel, each such voxel then gets, at a round's start,
exactly ``weight / (B |Omega|)``: ``weight`` times the largest gradient nnU-Net's mean cross-entropy gives any voxel
(before deep supervision's weights), whatever |D|, beta, the loss type, the batch size or the pairs per step. With
``'pair_mean'`` (0.8 and earlier, the paper's reading) the term is ``weight`` x the mean of the pairs' losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from nnunetv2_mapo.method import TERM_SCALES
from nnunetv2_mapo.method.objectives import combine_objectives
from nnunetv2_mapo.method.preference_loss import PreferenceLoss
from nnunetv2_mapo.method.preference_set import PreferenceBatch
from nnunetv2_mapo.training.metrics import STEP_KEYS, inactive_step_stats

Output = torch.Tensor | Sequence[torch.Tensor]


def append_pair_rows(data: torch.Tensor, pairs: PreferenceBatch | None) -> torch.Tensor:
    """The batch's input with the pairs' patches appended as its last rows (unchanged without pairs)."""
    if pairs is None or len(pairs) == 0:
        return data
    return torch.cat([data, pairs.images.to(data.device, data.dtype)])


def split_pair_rows(output: Output, count: int) -> tuple[Output, torch.Tensor]:
    """Splits a network output into the batch's rows (every deep-supervision scale) and the last ``count`` rows
    of the full-resolution output, which belong to the pairs.

    Raises:
        ValueError: ``count`` < 1 (``output[:-0]`` would be empty).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    if isinstance(output, (list, tuple)):
        return [o[:-count] for o in output], output[0][-count:]
    return output[:-count], output[-count:]


class MAPOLoss(nn.Module):
    """Segmentation loss + ``weight`` x preference loss.

    Args:
        segmentation_loss: nnU-Net's loss (``DeepSupervisionWrapper`` around Dice+CE or Dice+BCE).
        preference_loss: The :class:`~nnunetv2_mapo.method.preference_loss.PreferenceLoss`.
        weight: lambda, >= 0: with ``scale='voxel_gradient'`` the multiple of cross-entropy's largest per-voxel
            gradient that each disagreement voxel gets at a round's start.
        check_finite: Check on the host that the preference term is finite and leave it out of the step if not
            (one synchronisation per step with pairs). Without the check (for CUDA training, where nnU-Net's gradient
            scaler skips any step whose gradients are not finite), a non-finite term is replaced by 0 on the device
            and counted in ``mapo_skipped_steps``.
        num_objectives: Preference objectives (:mod:`nnunetv2_mapo.method.objectives`): with more than one, the
            pairs' losses are combined per objective with adaptive weights instead of averaged.
        scale: ``'voxel_gradient'`` or ``'pair_mean'`` (module docstring).

    Raises:
        ValueError: A negative weight, fewer than one objective, or an unknown scale.

    After each call, :attr:`last_stats` holds the step metrics of :mod:`nnunetv2_mapo.training.metrics`: detached
    0-d tensors on the output's device, or NaN floats without pairs.
    """

    def __init__(self, segmentation_loss: nn.Module, preference_loss: PreferenceLoss, weight: float,
                 check_finite: bool = True, num_objectives: int = 1, scale: str = "voxel_gradient") -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        if scale not in TERM_SCALES:
            raise ValueError(f"Unknown scale {scale!r}; allowed values: {list(TERM_SCALES)}.")
        self.scale = scale
        if num_objectives < 1:
            raise ValueError(f"num_objectives must be >= 1, got {num_objectives}.")
        self.num_objectives = int(num_objectives)
        self.segmentation_loss = segmentation_loss
        self.preference_loss = preference_loss
        self.weight = float(weight)
        self.check_finite = check_finite
        self.last_stats: dict[str, float | torch.Tensor] = inactive_step_stats()
        self._step_pairs: tuple[PreferenceBatch | None, torch.Tensor | None] = (None, None)

    @contextlib.contextmanager
    def pairs_of_this_step(self, pairs: PreferenceBatch | None,
                           pair_logits: torch.Tensor | None = None) -> Iterator[None]:
        """Gives the calls inside the block these pairs, for nnU-Net's ``train_step``, which calls
        ``self.loss(output, target)`` with no room for more arguments. Arguments given to a call win."""
        self._step_pairs = (pairs, pair_logits)
        try:
            yield
        finally:
            self._step_pairs = (None, None)

    def forward(self, output: Output, target: torch.Tensor | Sequence[torch.Tensor],
                pairs: PreferenceBatch | None = None, pair_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The step's loss.

        Args:
            output: The network's output for the batch, followed by ``len(pairs)`` pair rows when pairs are given
                and ``pair_logits`` is not.
            target: The batch's targets (nnU-Net's format; no rows for the pairs).
            pairs: The step's pairs; None: those of :meth:`pairs_of_this_step`, if any.
            pair_logits: The pairs' full-resolution logits from a pass of their own (networks whose training and
                eval modes differ); ``output`` then holds the batch's rows only.
        """
        if pairs is None:
            pairs, pair_logits = self._step_pairs[0], pair_logits if pair_logits is not None else self._step_pairs[1]
        if pairs is None or len(pairs) == 0:
            self.last_stats = inactive_step_stats()
            return self.segmentation_loss(output, target)
        if pair_logits is None:
            segmentation_output, pair_logits = split_pair_rows(output, len(pairs))
        else:
            segmentation_output = output
        segmentation = self.segmentation_loss(segmentation_output, target)
        losses, chosen_rewards, rejected_rewards, num_disagree = self.preference_loss(
            pair_logits, pairs.chosen, pairs.rejected, pairs.reference_chosen_logps, pairs.reference_rejected_logps,
            pairs.valid,
        )
        sized = losses * self._pair_sizes(num_disagree, target)
        if self.num_objectives > 1 and pairs.objective is not None:
            preference = combine_objectives(sized, chosen_rewards - rejected_rewards, pairs.objective,
                                            self.num_objectives)
        else:
            preference = sized.mean()
        if self.check_finite:
            if not torch.isfinite(preference):  # one host synchronisation
                # A non-finite preference term never reaches the optimizer: this step trains on Dice+CE alone.
                self.last_stats = inactive_step_stats() | {"mapo_skipped_steps": 1.0}
                return segmentation
            finite = torch.ones((), dtype=torch.bool, device=preference.device)
        else:
            finite = torch.isfinite(preference)
            preference = torch.where(finite, preference, torch.zeros_like(preference))
        with torch.no_grad():
            nan = torch.full_like(preference, float("nan"))
            value = lambda tensor: torch.where(finite, tensor.float(), nan)  # noqa: E731
            self.last_stats = {
                "mapo_dpo_loss": value(losses.mean()),
                "mapo_term": value(preference),
                "mapo_margin_nats": value((chosen_rewards - rejected_rewards).mean() / self.preference_loss.beta),
                "mapo_rewards_chosen": value(chosen_rewards.mean()),
                "mapo_rewards_rejected": value(rejected_rewards.mean()),
                "mapo_reward_margin": value((chosen_rewards - rejected_rewards).mean()),
                "mapo_reward_accuracy": value((chosen_rewards > rejected_rewards).float().mean()),
                "mapo_skipped_steps": (~finite).float(),
            }
        return segmentation + self.weight * preference

    def _pair_sizes(self, num_disagree: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-pair factors whose mean over the step's pairs sizes the term (module docstring): P |D_p| / (B |Omega|)
        / s for ``'voxel_gradient'``, 1 for ``'pair_mean'``."""
        if self.scale == "pair_mean":
            return torch.ones_like(num_disagree)
        full_resolution_target = target[0] if isinstance(target, (list, tuple)) else target
        batch_voxels = full_resolution_target.numel()  # (B, 1 or R, *spatial): voxels, or voxel-region entries
        return num_disagree * (len(num_disagree) / (batch_voxels * self.preference_loss.config.start_slope))


def collate_step_stats(steps: Sequence[Mapping[str, float | torch.Tensor]]) -> dict[str, list[float]]:
    """The step metrics of an epoch's steps as lists of floats, brought to the host in one transfer.

    Args:
        steps: :attr:`MAPOLoss.last_stats` of each step (device tensors or floats).

    Returns:
        ``{key: [value of each step]}`` for every key of :data:`nnunetv2_mapo.training.metrics.STEP_KEYS`.
    """
    if not steps:
        return {key: [] for key in STEP_KEYS}
    device = next((v.device for s in steps for v in s.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    table = torch.stack([torch.stack([torch.as_tensor(step[key], dtype=torch.float32, device=device).reshape(())
                                      for key in STEP_KEYS]) for step in steps])
    columns = table.cpu().T.tolist()
    return dict(zip(STEP_KEYS, columns))
