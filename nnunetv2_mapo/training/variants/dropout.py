"""MAPO with another kind of dropout hypotheses."""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = ["nnUNetTrainerMAPO_ChannelDropout"]


class nnUNetTrainerMAPO_ChannelDropout(nnUNetTrainerMAPO):
    """Hypotheses from channel (spatial) dropout instead of element-wise dropout: spatially coherent masks."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_dropout_mode = "channel"
