"""The unlabeled part of a preference round (``nnUNetTrainerMAPO_Unlabeled``).

1. choose the round's unlabeled cases (``mapo_unlabeled_cases_per_round`` of the cache's, seeded by the round; each
   rank its share);
2. load one unaugmented patch per case at a random place (an unlabeled case has no foreground to centre on) with
   nnU-Net's dataset, loader and validation transforms, as the labeled round does;
3. run the round with the consensus of the K dropout hypotheses and the network's prediction as the target
   (:func:`nnunetv2_mapo.method.label_free.consensus_target`): y+ the consensus, y- the hypothesis furthest from it,
   only on patches whose consensus is confident (``mapo_unlabeled_confidence``);
4. gather the ranks' pairs and report the round's ``mapo_unlabeled_*`` metrics and a line in nnU-Net's log.
"""

from __future__ import annotations

from time import time
from typing import TYPE_CHECKING

import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnunetv2_mapo.method.preference_set import PreferenceSet
from nnunetv2_mapo.training.distributed import gather_preference_set
from nnunetv2_mapo.training.preference_round import (
    generate_with_settings,
    numpy_seeded,
    pair_mirror_axes,
    round_batches,
    sample_cases,
    this_rank,
)

if TYPE_CHECKING:
    from nnunetv2_mapo.training.variants.unlabeled import nnUNetTrainerMAPO_Unlabeled


def unlabeled_round_cases(keys: list[str], limit: int | None, seed: int, round_index: int, rank: int = 0,
                          world_size: int = 1) -> list[str]:
    """Step 1: this rank's unlabeled cases of a round (sorted; a sample seeded by the round when capped)."""
    return sample_cases(keys, limit, seed + 15485863 + 7919 * round_index, rank, world_size)


def run_unlabeled_round(trainer: nnUNetTrainerMAPO_Unlabeled) -> tuple[PreferenceSet, dict[str, float]]:
    """Pairs from the unlabeled cases with the trainer's current network (policy and, unless fixed, reference).

    Returns:
        The unlabeled pairs (the same on every rank) and ``mapo_unlabeled_pairs``, ``mapo_unlabeled_items`` and
        ``mapo_unlabeled_seconds``.
    """
    started = time()
    keys = unlabeled_round_cases(trainer.mapo_unlabeled_keys, trainer.mapo_unlabeled_cases_per_round,
                                 trainer.mapo_seed, trainer.mapo_round_index, *this_rank(trainer))
    items_per_forward = max(1, trainer.mapo_round_batch_size // trainer.mapo_num_hypotheses)
    generator = torch.Generator(device=trainer.device)
    generator.manual_seed(trainer.mapo_seed + 1000003 * trainer.mapo_round_index + 499 + trainer.local_rank)
    with numpy_seeded(trainer.mapo_seed + 15485863 + 7919 * trainer.mapo_round_index + trainer.local_rank):
        dataset = nnUNetDatasetBlosc2(trainer.mapo_unlabeled_cache, keys) if keys else None
        found = generate_with_settings(trainer, round_batches(trainer, keys, items_per_forward, dataset),
                                       items_per_forward, generator, mirror_axes=pair_mirror_axes(trainer),
                                       pairing="ground_truth", objectives=("dice",),
                                       label_free_confidence=trainer.mapo_unlabeled_confidence)
    found = gather_preference_set(found)
    stats = {"mapo_unlabeled_pairs": float(len(found)), "mapo_unlabeled_items": float(found.num_items),
             "mapo_unlabeled_seconds": time() - started}
    trainer.print_to_log_file(
        f"MAPO round {trainer.mapo_round_index}, unlabeled: {len(found)} pairs from {found.num_items} patches (the "
        f"others had no confident consensus, agreement < {trainer.mapo_unlabeled_confidence}, or no hypothesis "
        f"{trainer.mapo_pair_margin} Dice below it); {stats['mapo_unlabeled_seconds']:.1f} s")
    return found, stats
