"""MAPO with another preference loss on the same pairs (formulas and sources: ``docs/method.md``).

Every class keeps the default sizing of the term (its gradient per voxel against cross-entropy's) and the bound on
pair reuse, so that the loss is the only difference to ``nnUNetTrainerMAPO``.
"""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = [
    "nnUNetTrainerMAPO_DPO",
    "nnUNetTrainerMAPO_DPOP",
    "nnUNetTrainerMAPO_Hinge",
    "nnUNetTrainerMAPO_IPO",
    "nnUNetTrainerMAPO_RPO",
    "nnUNetTrainerMAPO_SimPO",
    "nnUNetTrainerMAPO_TargetMargin",
    "nnUNetTrainerMAPO_cDPO",
]


class nnUNetTrainerMAPO_cDPO(nnUNetTrainerMAPO):
    """Conservative (robust) DPO, pinned: it stays this when the defaults of ``nnUNetTrainerMAPO`` change. The
    preferences are trusted with probability 1 - eps (Mitchell 2023; TRL's ``label_smoothing``), so the loss has its
    optimum at a finite margin, ln((1 - eps) / eps) / beta = 2.2 nats per disagreement voxel at eps 0.1, beta 1."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "cdpo"
        self.mapo_beta = 1.0
        self.mapo_label_smoothing = 0.1
        self.mapo_term_scale = "voxel_gradient"
        self.mapo_weight = 1.0
        self.mapo_max_pair_uses = 4


class nnUNetTrainerMAPO_DPO(nnUNetTrainerMAPO):
    """DPO's sigmoid loss, which has no optimum at a finite margin: what the bounded losses are measured against."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "sigmoid"


class nnUNetTrainerMAPO_TargetMargin(nnUNetTrainerMAPO):
    """A squared hinge on the margin in nats per disagreement voxel: it pulls until the margin reaches
    ``mapo_target_margin`` (1 nat) and not at all beyond it."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "target_margin"


class nnUNetTrainerMAPO_RPO(nnUNetTrainerMAPO):
    """RPO: DPO plus the preferred mask's negative log-likelihood per disagreement voxel (weight
    ``mapo_rpo_alpha``), which keeps y+ from becoming less likely while the margin grows."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "rpo"


class nnUNetTrainerMAPO_IPO(nnUNetTrainerMAPO):
    """IPO, with a beta of its own: at 0.6 its loss at a round's start, 1 / (4 beta^2), is DPO's ln 2, and it holds
    the margin at 1 / (2 beta) = 0.83 nats per voxel. (At beta 0.1 its start loss was 25 per pair, and with the term
    sized as a mean of losses it collapsed a network: ``docs/benchmarks.md``.)"""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "ipo"
        self.mapo_beta = 0.6


class nnUNetTrainerMAPO_Hinge(nnUNetTrainerMAPO):
    """Hinge (SLiC-style) instead of the default loss: it stops at a margin of 1 / beta nats per voxel."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_loss_type = "hinge"


class nnUNetTrainerMAPO_SimPO(nnUNetTrainerMAPO):
    """Reference-free SimPO: the |D|-averaged log-likelihood margin against a target margin; rounds skip the
    reference pass. Without a reference the rewards are log-likelihoods, not log-ratios, so beta is SimPO's usual
    scale (2.0) with gamma = beta / 4."""

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
