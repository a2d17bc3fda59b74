"""The equal-compute arm: how many iterations per epoch give ``nnUNetTrainer`` MAPO's extra compute.

MAPO costs more than the baseline in two places, both counted in sample-passes (one sample through the network):

- every training step with pairs carries ``mapo_pairs_per_step`` extra rows forward and backward, as many
  sample-passes as the batch's own rows;
- every preference round runs ``mapo_cases_per_round`` x ``mapo_patches_per_case`` x (K + 1) forward passes without a
  backward pass (K without the reference pass of reference-free losses; one, the prediction, when the ground truth
  is paired with the prediction). A forward pass is counted as a third of a forward-backward pass, the
  usual ratio for convolutional networks (the backward pass computes gradients for activations and weights).
  A fixed reference policy (``mapo_reference_policy = first_round``) adds its own pass per case. Online pairs
  (``mapo_online_pairs``) run no rounds; each pair row costs the passes a round's case costs, at its step.
  With ``mapo_mirror_pairs`` each case also counts a reference pass per further mirrored view (2 ** spatial
  dimensions - 1), although only cases with a pair run them: the arm gets at least MAPO's compute.

Rounds and pair rows follow the trainer's schedule, simulated epoch by epoch: a round at the end of the warm-up, then
whenever the set is spent (``mapo_max_pair_uses`` draws of every pair) or ``mapo_regen_every`` epochs have passed.
The simulation assumes that every case gives a pair; a round that finds fewer pairs spends its set sooner, so MAPO
then runs more rounds (and carries fewer pair rows) than counted.

The equal-compute arm trains the baseline for the same epochs with ``ceil(iterations + extra / epochs)``
iterations per epoch, extra being MAPO's additional sample-passes divided by the batch size. The benchmark reports
each arm's wall time beside it, so whether the arms also took the same time can be read off. The settings are those
the benchmark gives the MAPO trainer over ``nnUNetTrainerMAPO``'s defaults; a variant's own class defaults are not
seen (``--mapo-trainer nnUNetTrainerMAPO_SimPO`` is counted with the reference pass it skips: slightly more compute
for the equal-compute arm, never less). Rounds are counted from the end of the warm-up: a first round that waits for
the pseudo Dice (``mapo_start_dice``) cannot be foreseen, so with it MAPO uses less compute than the arm is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nnunetv2_mapo.method import PREDICTION_PAIRINGS, REFERENCE_FREE_LOSS_TYPES
from nnunetv2_mapo.training.settings import MAPO_SETTINGS, resolve_and_check

FORWARD_SHARE = 1 / 3  # a forward pass, in forward-backward passes


def mapo_schedule(total_epochs: int, settings: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
    """The MAPO settings that set its cost, resolved as the trainer resolves them (defaults, derived values).

    Args:
        total_epochs: ``num_epochs`` of the MAPO training.
        settings: The ``mapo_*`` settings given to it (the rest are the defaults of ``nnUNetTrainerMAPO``).
        batch_size: The batch size of one process.
    """
    values = {s.name: s.default for s in MAPO_SETTINGS} | {"num_epochs": total_epochs}
    values |= {k: v for k, v in settings.items() if k.startswith("mapo_")}
    return resolve_and_check(values, batch_size)


def mapo_extra_iterations(total_epochs: int, first_epoch: int, iterations: int, batch_size: int, train_cases: int,
                          settings: Mapping[str, Any], spatial_dims: int = 3) -> float:
    """MAPO's extra sample-passes over the epochs ``first_epoch .. total_epochs - 1``, in baseline iterations.

    Args:
        total_epochs: ``num_epochs`` of the MAPO training.
        first_epoch: The first epoch it trains itself (after a shared warm-up; 0 without one).
        iterations: Training iterations per epoch.
        batch_size: The batch size of one process.
        train_cases: The training cases a round draws from.
        settings: The ``mapo_*`` settings given to the MAPO trainer.
        spatial_dims: 2 or 3, the configuration's patch dimensions (mirrored views of ``mapo_mirror_pairs``).

    Returns:
        Extra sample-passes / batch size (a number of iterations, not rounded).
    """
    resolved = mapo_schedule(total_epochs, settings, batch_size)
    cases = min(train_cases, resolved["mapo_cases_per_round"] or train_cases) * resolved["mapo_patches_per_case"]
    epochs = range(max(first_epoch, resolved["mapo_warmup_epochs"]), total_epochs)
    if resolved["mapo_online_pairs"]:  # no rounds: every pair row is an item of a round of its own step
        pair_rows = len(epochs) * iterations * resolved["mapo_pairs_per_step"]
        rounds, cases = 1, pair_rows
    else:
        rounds, pair_rows = simulate_rounds(epochs, iterations * resolved["mapo_pairs_per_step"],
                                            resolved["mapo_regen_every"], cases, resolved["mapo_max_pair_uses"])
    has_reference = resolved["mapo_loss_type"] not in REFERENCE_FREE_LOSS_TYPES
    with_prediction = resolved["mapo_pairing"] == "dropout_and_prediction"  # runs the pass without dropout anyway
    fixed_reference = has_reference and resolved["mapo_reference_policy"] == "first_round"  # its own pass
    passes_per_case = resolved["mapo_num_hypotheses"] + (has_reference or with_prediction) + fixed_reference
    if resolved["mapo_pairing"] in PREDICTION_PAIRINGS:  # the prediction alone, no hypotheses
        passes_per_case = 1
    if resolved["mapo_mirror_pairs"] and has_reference:  # a reference pass per further mirrored view
        passes_per_case += 2 ** spatial_dims - 1
    round_rows = rounds * cases * passes_per_case * FORWARD_SHARE
    return (pair_rows + round_rows) / batch_size


def simulate_rounds(epochs: range, pairs_per_epoch: float, regen_every: int, set_size: int,
                    max_uses: int | None) -> tuple[int, float]:
    """Rounds and pair rows over ``epochs`` (those after the warm-up) under the trainer's schedule.

    Args:
        epochs: The epochs with preference training.
        pairs_per_epoch: Pair rows the steps of one epoch ask for.
        regen_every: ``mapo_regen_every``.
        set_size: Pairs per round.
        max_uses: ``mapo_max_pair_uses`` (None: no bound).

    Returns:
        ``(rounds, pair rows)``.
    """
    rounds, rows, last_round, left = 0, 0.0, None, math.inf
    for epoch in epochs:
        if last_round is None or left <= 0 or epoch - last_round >= regen_every:
            rounds, last_round = rounds + 1, epoch
            left = math.inf if max_uses is None else set_size * max_uses
        taken = min(pairs_per_epoch, left)
        rows, left = rows + taken, left - taken
    return rounds, rows


def equal_compute_iterations(total_epochs: int, first_epoch: int, iterations: int, batch_size: int,
                             train_cases: int, settings: Mapping[str, Any], spatial_dims: int = 3) -> int:
    """Iterations per epoch of the equal-compute arm over the same epochs (module docstring).

    Raises:
        ValueError: No epoch to train (``first_epoch >= total_epochs``).
    """
    own_epochs = total_epochs - first_epoch
    if own_epochs < 1:
        raise ValueError(f"No epoch to train: first_epoch {first_epoch}, total_epochs {total_epochs}.")
    extra = mapo_extra_iterations(total_epochs, first_epoch, iterations, batch_size, train_cases, settings,
                                  spatial_dims)
    return math.ceil(iterations + extra / own_epochs - 1e-9)
