"""MAPO with another preference loss on the same pairs (formulas and sources: ``docs/method.md``)."""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = ["nnUNetTrainerMAPO_IPO", "nnUNetTrainerMAPO_Hinge", "nnUNetTrainerMAPO_SimPO", "nnUNetTrainerMAPO_DPOP"]


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


class nnUNetTrainerMAPO_SimPO(nnUNetTrainerMAPO):
    """Reference-free SimPO: the |D|-averaged log-likelihood margin against a target margin; rounds skip the
    reference pass. Without a reference the rewards are log-likelihoods, not log-ratios, so beta is SimPO's usual
    scale (2.0) with gamma = beta / 4 rather than DPO's 0.1."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "simpo"
        self.mapo_beta = 2.0
        self.mapo_simpo_gamma = 0.5


class nnUNetTrainerMAPO_DPOP(nnUNetTrainerMAPO):
    """DPO-Positive: DPO plus a penalty once the preferred mask is less likely than under the reference."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "dpop"
