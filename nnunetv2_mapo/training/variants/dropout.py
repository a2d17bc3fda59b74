"""MAPO with another kind of dropout hypotheses, and the ablation with dropout but no preference term."""

from __future__ import annotations

import torch

from nnunetv2_mapo.method.dropout import find_injector
from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = ["nnUNetTrainerDropoutOnly", "nnUNetTrainerMAPO_ChannelDropout"]


class nnUNetTrainerMAPO_ChannelDropout(nnUNetTrainerMAPO):
    """Hypotheses from channel (spatial) dropout instead of element-wise dropout: spatially coherent masks."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_dropout_mode = "channel"


class nnUNetTrainerDropoutOnly(nnUNetTrainerMAPO):
    """The ablation that tells dropout's effect from the preference term's: nnU-Net's training with MAPO's injected
    dropout on in every supervised step (each sample at a rate drawn from ``mapo_dropout_rates``), and no
    preference round and no preference term. Prediction runs without dropout, as for every MAPO trainer.

    It derives from ``nnUNetTrainerMAPO`` only to share its network, settings and logs (the MAPO metrics stay NaN),
    so that ``nnunetv2_mapo benchmark --mapo-trainer nnUNetTrainerDropoutOnly`` runs it like any variant.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._dropout_rate_generator = torch.Generator()

    def initialize(self):
        super().initialize()
        self._dropout_rate_generator.manual_seed(self.mapo_seed + self.local_rank)

    def mapo_round_due(self, epoch: int) -> bool:
        return False

    def train_step(self, batch: dict) -> dict:
        rates = torch.tensor(self.mapo_dropout_rates)
        choice = torch.randint(len(rates), (batch["data"].shape[0],), generator=self._dropout_rate_generator)
        with find_injector(self.network).sampling(rates[choice]):
            return super().train_step(batch)
