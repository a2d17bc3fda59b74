"""MAPO with unlabeled scans: rounds also draw pairs from images without labels (``docs/method.md``, "Unlabeled").

Set ``mapo_unlabeled_folder`` to a folder of raw images named as in ``imagesTr``; the first start preprocesses them
with the plans into ``nnUNet_preprocessed`` (:mod:`nnunetv2_mapo.training.unlabeled_data`), and every round then adds
the pairs of :mod:`nnunetv2_mapo.training.unlabeled_round` to those of the labeled cases.
"""

from __future__ import annotations

import torch

from nnunetv2_mapo.method.preference_set import PreferenceSet
from nnunetv2_mapo.training.settings import TRAINER_SETTINGS, UNLABELED_SETTING_NAMES
from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO
from nnunetv2_mapo.training.unlabeled_data import check_unlabeled_folder, prepare_unlabeled_data
from nnunetv2_mapo.training.unlabeled_round import run_unlabeled_round

__all__ = ["nnUNetTrainerMAPO_Unlabeled"]


class nnUNetTrainerMAPO_Unlabeled(nnUNetTrainerMAPO):
    """Labeled cases keep their ground-truth pairs; unlabeled patches give pairs ranked against the consensus of the
    network's hypotheses (y+ the consensus), only where that consensus is confident."""

    mapo_setting_names = TRAINER_SETTINGS + UNLABELED_SETTING_NAMES

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        ### Some hyperparameters for you to fiddle with
        self.mapo_unlabeled_folder: str | None = None  # raw images as in imagesTr; required
        self.mapo_unlabeled_cases_per_round: int | None = 100  # one patch each; None: all
        self.mapo_unlabeled_confidence = 0.8  # mean vote agreement over the foreground (why 0.8: docs/method.md)
        # state
        self.mapo_unlabeled_cache: str | None = None  # the preprocessed cases (on_train_start)
        self.mapo_unlabeled_keys: list[str] = []

    def _apply_mapo_settings(self) -> None:
        super()._apply_mapo_settings()
        check_unlabeled_folder(self)  # names only, before any data is loaded

    def on_train_start(self):
        super().on_train_start()
        self.mapo_unlabeled_cache, self.mapo_unlabeled_keys = prepare_unlabeled_data(self)

    def mapo_generate_round(self) -> tuple[PreferenceSet, dict[str, float]]:
        labeled, stats = super().mapo_generate_round()
        unlabeled, unlabeled_stats = run_unlabeled_round(self)
        stats["mapo_regen_seconds"] += unlabeled_stats["mapo_unlabeled_seconds"]  # the round's whole cost
        return PreferenceSet.concatenate([labeled, unlabeled]), stats | unlabeled_stats
