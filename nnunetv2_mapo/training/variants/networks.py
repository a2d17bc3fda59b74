"""MAPO on nnU-Net's other networks: each class is nnU-Net's trainer with MAPO on top, in one line.

``nnUNetTrainerMAPO`` comes first in the bases, so its hooks run and call the next trainer's through ``super()``;
that trainer builds the network (BatchNorm U-Net, Primus Transformer) and keeps its optimizer, schedule and steps.
Both kinds compute differently in training and eval mode, so their pair rows get an eval-mode pass of their own
(:mod:`nnunetv2_mapo.method.train_eval`). The residual-encoder U-Nets need no class: they are plans
(``-p nnUNetResEncUNetMPlans``), trained with ``nnUNetTrainerMAPO`` itself.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import (
    nnUNet_Primus_B_Trainer,
    nnUNet_Primus_L_Trainer,
    nnUNet_Primus_M_Trainer,
    nnUNet_Primus_S_Trainer,
)
from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerBN import nnUNetTrainerBN

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = [
    "nnUNetTrainerMAPO_BN",
    "nnUNetTrainerMAPO_Primus_B",
    "nnUNetTrainerMAPO_Primus_L",
    "nnUNetTrainerMAPO_Primus_M",
    "nnUNetTrainerMAPO_Primus_S",
]


class nnUNetTrainerMAPO_BN(nnUNetTrainerMAPO, nnUNetTrainerBN):
    """nnU-Net's U-Net with BatchNorm instead of InstanceNorm (``nnUNetTrainerBN``), with MAPO."""


class nnUNetTrainerMAPO_Primus_S(nnUNetTrainerMAPO, nnUNet_Primus_S_Trainer):
    """nnU-Net's Primus-S Transformer (3D; patch sizes divisible by 8; DropPath 0.2), with MAPO."""


class nnUNetTrainerMAPO_Primus_B(nnUNetTrainerMAPO, nnUNet_Primus_B_Trainer):
    """nnU-Net's Primus-B Transformer, with MAPO."""


class nnUNetTrainerMAPO_Primus_M(nnUNetTrainerMAPO, nnUNet_Primus_M_Trainer):
    """nnU-Net's Primus-M Transformer, with MAPO."""


class nnUNetTrainerMAPO_Primus_L(nnUNetTrainerMAPO, nnUNet_Primus_L_Trainer):
    """nnU-Net's Primus-L Transformer, with MAPO."""
