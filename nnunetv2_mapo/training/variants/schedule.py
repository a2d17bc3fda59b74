"""MAPO with another round schedule."""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = ["nnUNetTrainerMAPO_NoWarmup"]


class nnUNetTrainerMAPO_NoWarmup(nnUNetTrainerMAPO):
    """Preference rounds from the first epoch: for fine-tuning with ``-pretrained_weights``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_warmup_epochs = 0
