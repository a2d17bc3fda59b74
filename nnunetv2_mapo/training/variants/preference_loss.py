"""MAPO with another preference loss on the same pairs."""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = ["nnUNetTrainerMAPO_IPO", "nnUNetTrainerMAPO_Hinge"]


class nnUNetTrainerMAPO_IPO(nnUNetTrainerMAPO):
    """IPO instead of DPO's sigmoid loss."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "ipo"


class nnUNetTrainerMAPO_Hinge(nnUNetTrainerMAPO):
    """Hinge (SLiC-style) instead of DPO's sigmoid loss."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "hinge"
