"""``nnUNetTrainerPseudoLabel``: nnU-Net's trainer plus online pseudo-labels on unlabeled scans.

The baseline that ``nnUNetTrainerMAPO_Unlabeled`` must beat to show that its gain is more than "saw more images":
the same unlabeled cases, the same extra rows per step and the same kind of confidence gate, with Dice+CE on the
network's own prediction instead of a preference term (self-training, as in FixMatch without its strong augmentation).

After the warm-up each training step draws ``mapo_pairs_per_step`` unlabeled cases (on average; batch size / 8 by
default, the rows MAPO's pairs add), takes one patch of each at a random place, predicts it with the network in eval
mode, and keeps the patches whose prediction is confident: the mean winning probability (softmax; for regions the
least certain region's sigmoid) over the voxels predicted foreground reaches ``mapo_unlabeled_confidence``. The kept
patches join the batch, randomly mirrored, with their hard prediction as the target at every deep-supervision scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.nn import functional

from nnunetv2_mapo.method.dropout import unwrap
from nnunetv2_mapo.method.label_free import foreground_mean, reaches
from nnunetv2_mapo.method.schedule import pairs_for_step
from nnunetv2_mapo.method.scoring import logits_to_masks
from nnunetv2_mapo.method.train_eval import eval_mode, full_resolution
from nnunetv2_mapo.training.metrics import register_log_keys
from nnunetv2_mapo.training.preference_round import numpy_seeded, patch_loader
from nnunetv2_mapo.training.settings import (
    NNUNET_SETTINGS,
    UNLABELED_SETTING_NAMES,
    MAPOConfigError,
    config_from_environment,
)
from nnunetv2_mapo.training.unlabeled_data import check_unlabeled_folder, prepare_unlabeled_data

__all__ = ["PSEUDO_LABEL_LOG_KEYS", "nnUNetTrainerPseudoLabel", "prediction_confidence"]

PSEUDO_LABEL_LOG_KEYS = ("pseudo_unlabeled_rows", "pseudo_unlabeled_kept_share")
# nnU-Net's keys, the unlabeled ones, and the MAPO keys whose meaning carries over (the other MAPO keys are ignored,
# so that one settings file serves both arms of a comparison)
PSEUDO_LABEL_SETTINGS = (tuple(s.name for s in NNUNET_SETTINGS) + UNLABELED_SETTING_NAMES
                         + ("mapo_warmup_epochs", "mapo_pairs_per_step", "mapo_seed"))


def prediction_confidence(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """The mean confidence of a prediction over the voxels it calls foreground.

    Args:
        logits: ``(N, C, *spatial)`` network output.
        regions: Whether the channels are regions (sigmoid) or classes (softmax).

    Returns:
        ``(N,)``: the mean winning probability over the predicted-foreground voxels (regions: the least certain
        region's max(p, 1 - p)); NaN where nothing is predicted foreground.
    """
    if regions:
        probabilities = torch.sigmoid(logits.float())
        certainty = torch.maximum(probabilities, 1 - probabilities).amin(1)
        foreground = (probabilities > 0.5).any(1)
    else:
        probabilities = torch.softmax(logits.float(), 1)
        certainty, winner = probabilities.max(1)
        foreground = winner > 0
    return foreground_mean(certainty, foreground)


class nnUNetTrainerPseudoLabel(nnUNetTrainer):
    """nnU-Net's trainer with confidence-gated pseudo-labels of unlabeled patches added to each step's batch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        ### Some hyperparameters for you to fiddle with (set through nnUNet_mapo_config, as MAPO's)
        self.mapo_unlabeled_folder: str | None = None  # raw images as in imagesTr; required
        self.mapo_unlabeled_confidence = 0.8  # mean winning probability over the predicted foreground
        self.mapo_warmup_epochs: int | None = None  # Dice+CE on the labeled cases alone first; None: 10%
        self.mapo_pairs_per_step: float | None = None  # unlabeled rows drawn per step; None: batch size / 8
        self.mapo_seed = 12345
        self.mapo_unlabeled_cases_per_round: int | None = None  # read for a shared settings file; unused here
        # state
        self.pseudo_ignored_settings: list[str] = []
        self.mapo_unlabeled_cache: str | None = None
        self.mapo_unlabeled_keys: list[str] = []
        self._pseudo_loader = None
        self._pseudo_epoch = {"drawn": 0, "kept": 0, "steps": 0}

    def initialize(self):
        if not self.was_initialized:  # before any data is loaded: bad settings fail fast
            overrides = config_from_environment()
            self.pseudo_ignored_settings = sorted(set(overrides) - set(PSEUDO_LABEL_SETTINGS))
            for name in set(overrides) & set(PSEUDO_LABEL_SETTINGS):
                setattr(self, name, overrides[name])
            if self.mapo_warmup_epochs is None:
                self.mapo_warmup_epochs = int(round(0.1 * self.num_epochs))
            if self.mapo_warmup_epochs >= self.num_epochs:
                raise MAPOConfigError(f"mapo_warmup_epochs = {self.mapo_warmup_epochs} leaves no epoch with "
                                      f"pseudo-labels (num_epochs {self.num_epochs}). Lower it or raise num_epochs.")
            check_unlabeled_folder(self)
        super().initialize()
        if self.mapo_pairs_per_step is None:
            self.mapo_pairs_per_step = self.batch_size / 8
        register_log_keys(self.logger, PSEUDO_LABEL_LOG_KEYS, self.current_epoch)

    def on_train_start(self):
        super().on_train_start()
        if self.pseudo_ignored_settings:
            self.print_to_log_file(f"nnUNetTrainerPseudoLabel ignores {self.pseudo_ignored_settings} (MAPO's "
                                   f"preference settings: it has no preference term).")
        self.mapo_unlabeled_cache, self.mapo_unlabeled_keys = prepare_unlabeled_data(self)
        self._pseudo_loader = patch_loader(self, nnUNetDatasetBlosc2(self.mapo_unlabeled_cache,
                                                                     list(self.mapo_unlabeled_keys)))
        self.print_to_log_file(
            f"Pseudo-labels: after {self.mapo_warmup_epochs} warm-up epochs, {self.mapo_pairs_per_step:g} unlabeled "
            f"patches per step on average, kept when the prediction's confidence is >= "
            f"{self.mapo_unlabeled_confidence}.")

    def load_checkpoint(self, filename_or_checkpoint):
        super().load_checkpoint(filename_or_checkpoint)
        register_log_keys(self.logger, PSEUDO_LABEL_LOG_KEYS, self.current_epoch)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._pseudo_epoch = {"drawn": 0, "kept": 0, "steps": 0}

    def train_step(self, batch: dict) -> dict:
        step = self._pseudo_epoch["steps"]
        self._pseudo_epoch["steps"] += 1
        if self.current_epoch >= self.mapo_warmup_epochs and self.mapo_unlabeled_keys:
            count = pairs_for_step(self.mapo_pairs_per_step, self.current_epoch * self.num_iterations_per_epoch + step)
            if count:
                batch = self.add_pseudo_labelled_rows(batch, count, step)
        return super().train_step(batch)

    @torch.no_grad()
    def add_pseudo_labelled_rows(self, batch: dict, count: int, step: int) -> dict:
        """``batch`` with up to ``count`` confident pseudo-labelled unlabeled patches appended (none when no patch
        is confident). The cases and mirrorings are seeded by the epoch and step (a resumed run draws the same)."""
        rng = np.random.RandomState((self.mapo_seed + 104729 * self.current_epoch + 7 * step + self.local_rank) % 2**32)
        keys = rng.choice(self.mapo_unlabeled_keys, count, replace=count > len(self.mapo_unlabeled_keys)).tolist()
        with numpy_seeded(int(rng.randint(2**31))):  # where the loader places the patches
            data = self._pseudo_loader.load(keys)["data"].to(self.device)
        network = unwrap(self.network)
        with eval_mode(network):
            logits = full_resolution(network(data))
        regions = self.label_manager.has_regions
        confidence = prediction_confidence(logits, regions)
        keep = reaches(confidence, self.mapo_unlabeled_confidence)
        self._pseudo_epoch["drawn"] += len(keys)
        self._pseudo_epoch["kept"] += int(keep.sum())
        if not bool(keep.any()):
            return batch
        masks = logits_to_masks(logits[keep], self.label_manager)
        target = masks.float() if regions else masks.unsqueeze(1).float()
        if regions and self.label_manager.has_ignore_label:  # the ignore channel: nothing ignored
            target = torch.cat([target, torch.zeros_like(target[:, :1])], 1)
        data = data[keep]
        for axis in self.inference_allowed_mirroring_axes or ():
            if rng.rand() < 0.5:
                data, target = data.flip(axis + 2), target.flip(axis + 2)
        return {**batch, "data": torch.cat([batch["data"], data.to(batch["data"].device, batch["data"].dtype)]),
                "target": self._with_pseudo_targets(batch["target"], target)}

    def _with_pseudo_targets(self, targets, pseudo: torch.Tensor):
        # One target per deep-supervision scale, each as nnU-Net's transforms downsample it (nearest neighbour).
        def joined(existing: torch.Tensor) -> torch.Tensor:
            scaled = pseudo if pseudo.shape[2:] == existing.shape[2:] else functional.interpolate(
                pseudo, size=existing.shape[2:], mode="nearest-exact")
            return torch.cat([existing, scaled.to(existing.device, existing.dtype)])

        return [joined(t) for t in targets] if isinstance(targets, (list, tuple)) else joined(targets)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        drawn, kept = self._pseudo_epoch["drawn"], self._pseudo_epoch["kept"]
        if self.current_epoch >= self.mapo_warmup_epochs:
            self.print_to_log_file(f"Pseudo-labels: {kept} of {drawn} unlabeled patches confident enough")
        self.logger.log("pseudo_unlabeled_rows", float(kept), self.current_epoch)
        self.logger.log("pseudo_unlabeled_kept_share", kept / drawn if drawn else math.nan, self.current_epoch)
