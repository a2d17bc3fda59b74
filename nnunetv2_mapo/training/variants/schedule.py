"""MAPO with another round schedule, or another reference policy."""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = ["nnUNetTrainerMAPO_FixedReference", "nnUNetTrainerMAPO_NoWarmup", "nnUNetTrainerMAPO_OnlinePairs"]


class nnUNetTrainerMAPO_NoWarmup(nnUNetTrainerMAPO):
    """Preference rounds from the first epoch: for fine-tuning with ``-pretrained_weights``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_warmup_epochs = 0


class nnUNetTrainerMAPO_FixedReference(nnUNetTrainerMAPO):
    """The reference policy stays put: the network at the first round (the end of the warm-up), for the whole
    training, instead of the network at each round. With a bounded loss the policy's drift from that network on the
    pairs stays bounded over the whole training, not only within a round; each round costs one more forward pass per
    case (the fixed network's)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_reference_policy = "first_round"


class nnUNetTrainerMAPO_OnlinePairs(nnUNetTrainerMAPO):
    """No preference rounds: every step draws its pairs fresh from its own augmented batch (K dropout hypotheses for
    ``mapo_pairs_per_step`` of its rows), and each pair is used by that step only: the limit of the reuse bound."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_online_pairs = True
