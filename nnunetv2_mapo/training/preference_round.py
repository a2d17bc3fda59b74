"""A preference round in nnU-Net's terms, from top to bottom.

1. choose the round's training cases (all, or ``mapo_cases_per_round`` of them; each rank takes its share);
2. load ``mapo_patches_per_case`` foreground-centred patches per case (each at a foreground voxel drawn anew: in
   ``2d``, another slice) with nnU-Net's own dataset, loader and validation transforms;
3. seed the round (dropout masks and patch choice depend on the seed, the round and the rank only);
4. check that every rank holds the same weights (each computes reference log-likelihoods for its share);
5. run the round (:func:`nnunetv2_mapo.method.round.generate_preference_set`) and gather the ranks' pairs;
6. report it: the round metrics of :mod:`nnunetv2_mapo.training.metrics`, a line in nnU-Net's log and, on rank 0,
   a picture of a few of its pairs (``mapo_rounds/round_NNNN.png``, :mod:`.round_pictures`).

With ``mapo_online_pairs`` there are no rounds: :func:`online_pairs` runs the same generation on a few rows of each
training step's own batch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from time import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset
from torch import distributed as dist

from nnunetv2_mapo.method import PREDICTION_PAIRINGS, REFERENCE_FREE_LOSS_TYPES
from nnunetv2_mapo.method.dropout import find_injector, unwrap
from nnunetv2_mapo.method.objectives import objectives_of
from nnunetv2_mapo.method.preference_set import PreferenceBatch, PreferenceSet
from nnunetv2_mapo.method.round import RoundExamples, generate_preference_set
from nnunetv2_mapo.training.distributed import (
    assert_same_on_all_ranks,
    gather_preference_set,
    parameters_fingerprint,
    shard_cases,
)
from nnunetv2_mapo.training.round_pictures import write_round_picture

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO


class FixedKeysLoader(nnUNetDataLoader):
    """nnU-Net's loader, but for given cases, one foreground-centred patch each (no augmentation)."""

    def load(self, keys: list[str]) -> dict:
        self._keys, self.batch_size = list(keys), len(keys)
        return self.generate_train_batch()

    def get_indices(self) -> list[str]:
        return self._keys


def sample_cases(keys: Iterable[str], limit: int | None, seed: int, rank: int = 0, world_size: int = 1) -> list[str]:
    """A round's cases on one rank: ``keys`` sorted, a sample of ``limit`` of them seeded by ``seed`` when that is
    fewer, and this rank's share of them (:func:`~nnunetv2_mapo.training.distributed.shard_cases`)."""
    keys = sorted(keys)
    if limit is not None and limit < len(keys):
        keys = sorted(np.random.RandomState(seed % 2**32).choice(keys, limit, replace=False).tolist())
    return shard_cases(keys, rank, world_size) if world_size > 1 else keys


def this_rank(trainer: nnUNetTrainer) -> tuple[int, int]:
    """``(rank, world size)`` of a trainer's process; ``(0, 1)`` without DDP."""
    return (dist.get_rank(), dist.get_world_size()) if trainer.is_ddp else (0, 1)


@contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """Seeds numpy's global generator inside the block (nnU-Net's loader places patches with it) and restores the
    training's own state afterwards, also when the block fails."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def round_cases(trainer: nnUNetTrainerMAPO) -> list[str]:
    """Step 1: the training cases of this round on this rank (sorted; a seeded sample when capped), each repeated
    ``mapo_patches_per_case`` times (one patch per entry)."""
    keys = sample_cases(trainer.mapo_train_keys, trainer.mapo_cases_per_round,
                        trainer.mapo_seed + 7919 * trainer.mapo_round_index, *this_rank(trainer))
    return [key for key in keys for _ in range(trainer.mapo_patches_per_case)]  # after sharding: cases stay whole


def round_batches(trainer: nnUNetTrainerMAPO, keys: list[str], items_per_batch: int,
                  dataset: nnUNetBaseDataset | None = None) -> Iterator[dict]:
    """Step 2: batches of one unaugmented, foreground-centred patch per entry of ``keys``, as nnU-Net's validation sees
    them (an entry repeated gives another patch: the foreground voxel it is centred on is drawn anew). A ``dataset``
    of cases without foreground (unlabeled scans) gives patches at random places instead."""
    if not keys:  # a rank with no share of the cases (more ranks than cases)
        return
    if dataset is None:
        dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, keys,
                                        folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    loader = patch_loader(trainer, dataset)
    for start in range(0, len(keys), items_per_batch):
        yield loader.load(keys[start:start + items_per_batch])


def patch_loader(trainer: nnUNetTrainer, dataset: nnUNetBaseDataset) -> FixedKeysLoader:
    """nnU-Net's loader with its validation transforms over ``dataset``: one patch per key, centred on a foreground
    voxel drawn anew each time, or at a random place in a case without foreground."""
    lm = trainer.label_manager
    transforms = trainer.get_validation_transforms(
        None, is_cascaded=trainer.is_cascaded, foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
    patch_size = trainer.configuration_manager.patch_size
    return FixedKeysLoader(dataset, 1, patch_size, patch_size, lm, oversample_foreground_percent=1.0,
                           transforms=transforms)


def run_preference_round(trainer: nnUNetTrainerMAPO) -> tuple[PreferenceSet, dict[str, float]]:
    """Runs one round with the trainer's current network as policy and reference.

    Returns:
        The preference set (the same on every rank) and the round metrics (keys of
        :data:`nnunetv2_mapo.training.metrics.ROUND_KEYS`; the Dice means only when the set has pairs).
    """
    started = time()
    keys = round_cases(trainer)
    against_prediction = trainer.mapo_pairing in PREDICTION_PAIRINGS  # no dropout hypotheses to run
    passes = "the prediction without dropout" if against_prediction else \
        f"{trainer.mapo_num_hypotheses} dropout hypotheses"
    trainer.print_to_log_file(
        f"MAPO round {trainer.mapo_round_index} (epoch {trainer.current_epoch}): {passes} for each of {len(keys)} "
        f"training {'cases' if trainer.mapo_patches_per_case == 1 else 'patches'}"
        + (" on this rank" if trainer.is_ddp else ""))
    items_per_forward = max(1, trainer.mapo_round_batch_size // (1 if against_prediction else
                                                                 trainer.mapo_num_hypotheses))
    # Step 3: dropout masks on the training device; nnU-Net's patch sampling uses the global numpy generator.
    generator = torch.Generator(device=trainer.device)
    generator.manual_seed(trainer.mapo_seed + 1000003 * trainer.mapo_round_index + trainer.local_rank)
    network = unwrap(trainer.network)
    examples = RoundExamples(trainer.mapo_round_pictures) if trainer.local_rank == 0 else None
    assert_same_on_all_ranks(parameters_fingerprint(network), "network parameters at a MAPO round")  # step 4
    with numpy_seeded(trainer.mapo_seed + 7919 * trainer.mapo_round_index + trainer.local_rank):
        preference_set = generate_with_settings(  # step 5
            trainer, round_batches(trainer, keys, items_per_forward), items_per_forward, generator, examples,
            mirror_axes=pair_mirror_axes(trainer))
    preference_set = gather_preference_set(preference_set)  # all ranks end with the same set
    stats = {"mapo_regen_seconds": time() - started, "mapo_dice_gap": preference_set.mean_dice_gap}
    if len(preference_set):
        stats |= {"mapo_dice_chosen": float(preference_set.chosen_dice.mean()),
                  "mapo_dice_rejected": float(preference_set.rejected_dice.mean()),
                  "mapo_dice_no_dropout": float(preference_set.network_dice.mean())}  # NaN if reference-free
    report_round(trainer, preference_set, stats)  # step 6
    if examples is not None and examples.items:
        write_round_picture(examples.items, round_picture_path(trainer.output_folder, preference_set.round_index),
                            f"MAPO round {preference_set.round_index} (epoch {preference_set.epoch}): "
                            f"{len(preference_set)} pairs from {preference_set.num_items} items")
    return preference_set, stats


def online_pairs(trainer: nnUNetTrainerMAPO, batch: dict, count: int) -> PreferenceBatch | None:
    """Pairs drawn fresh from a training step's own batch (``mapo_online_pairs``), each used by that step only.

    The last ``count`` rows of the augmented batch (nnU-Net's loader centres the last third of a batch on
    foreground) get K dropout hypotheses, their scores against the rows' own targets, a pair where the gap allows,
    and the reference log-likelihoods of the network as it is now: the round of :func:`run_preference_round`, on
    ``count`` patches, at every step.

    Returns:
        The pairs (on the CPU), or None when no row gave one.
    """
    target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
    rows = {"data": batch["data"][-count:], "target": target[-count:], "keys": list(batch["keys"])[-count:]}
    generator = torch.Generator(device=trainer.device)
    generator.manual_seed(trainer.mapo_seed + 1000003 * trainer._mapo_pair_steps + trainer.local_rank)
    found = generate_with_settings(trainer, [rows], count, generator)
    return found.take(torch.arange(len(found)), trainer._mapo_pair_generator) if len(found) else None


def generate_with_settings(trainer: nnUNetTrainerMAPO, batches: Iterable[dict], items_per_forward: int,
                           generator: torch.Generator, examples: RoundExamples | None = None,
                           mirror_axes: tuple[int, ...] = (), **overrides) -> PreferenceSet:
    """:func:`~nnunetv2_mapo.method.round.generate_preference_set` on ``batches`` with the trainer's network and
    settings: the one place that turns the trainer's settings into the round's arguments (``overrides``: keyword
    arguments that replace them, as an unlabeled round's pairing)."""
    arguments = dict(reference_pass=trainer.mapo_loss_type not in REFERENCE_FREE_LOSS_TYPES,
                     pairing=trainer.mapo_pairing, objectives=objectives_of(trainer.mapo_objectives),
                     mirror_axes=mirror_axes, reference_network=trainer.mapo_reference_network)
    return generate_preference_set(
        unwrap(trainer.network), find_injector(trainer.network), batches, trainer.label_manager,
        trainer.mapo_num_hypotheses, trainer.mapo_dropout_rates, trainer.mapo_pair_margin, items_per_forward,
        trainer.device, generator, trainer.mapo_round_index, trainer.current_epoch, examples,
        **(arguments | overrides))


def frozen_copy(trainer: nnUNetTrainerMAPO, weights: dict) -> torch.nn.Module:
    """The trainer's network architecture with ``weights``, on its device, in eval mode and without gradients: the
    fixed reference policy of ``mapo_reference_policy = first_round`` (its injected dropout stays inactive)."""
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                 trainer.num_input_channels,
                                                 trainer.label_manager.num_segmentation_heads,
                                                 trainer.enable_deep_supervision)
    network.load_state_dict(weights)
    return network.to(trainer.device).eval().requires_grad_(False)


def pair_mirror_axes(trainer: nnUNetTrainerMAPO) -> tuple[int, ...]:
    """The axes a round's pairs may be mirrored along: nnU-Net's inference mirror axes with ``mapo_mirror_pairs``
    (none when the trainer allows no mirroring, which the log says once)."""
    if not trainer.mapo_mirror_pairs:
        return ()
    axes = tuple(trainer.inference_allowed_mirroring_axes or ())
    if not axes and not trainer.mapo_warned_no_mirroring:
        trainer.mapo_warned_no_mirroring = True
        trainer.print_to_log_file("MAPO: mapo_mirror_pairs is set, but this trainer allows no mirroring "
                                  "(inference_allowed_mirroring_axes is empty), so the pairs stay unmirrored.")
    return axes


def round_picture_path(output_folder: str, round_index: int) -> str:
    """``<fold folder>/mapo_rounds/round_NNNN.png``."""
    return os.path.join(output_folder, "mapo_rounds", f"round_{round_index:04d}.png")


def report_round(trainer: nnUNetTrainerMAPO, preference_set: PreferenceSet, stats: dict[str, float]) -> None:
    """Writes the round's line to nnU-Net's log; warns once when a round found no pair."""
    seconds = stats["mapo_regen_seconds"]
    margin = trainer.mapo_pair_margin
    if len(preference_set):
        trainer.print_to_log_file(
            f"MAPO round {preference_set.round_index}: {len(preference_set)} pairs from "
            f"{preference_set.num_items} items ({preference_set.num_items - len(preference_set)} without a gap "
            f">= {margin} in the ranking's score); Dice chosen {stats['mapo_dice_chosen']:.4f}, rejected "
            f"{stats['mapo_dice_rejected']:.4f}, gap {stats['mapo_dice_gap']:.4f}; without dropout "
            f"{stats['mapo_dice_no_dropout']:.4f} (y+ better on {preference_set.chosen_beats_network:.0%} of the "
            f"pairs); {seconds:.1f} s")
        return
    trainer.print_to_log_file(
        f"MAPO round {preference_set.round_index}: 0 pairs from {preference_set.num_items} items; {seconds:.1f} s. "
        f"Training continues on Dice+CE alone until the next round.")
    if not trainer.mapo_warned_empty_round:
        trainer.mapo_warned_empty_round = True
        warnings.warn(
            f"MAPO: no item yielded a preference pair (no dropout hypothesis scored {margin} Dice below the best). "
            f"Lower mapo_pair_margin or raise mapo_dropout_rates if this persists.", RuntimeWarning, stacklevel=3)
