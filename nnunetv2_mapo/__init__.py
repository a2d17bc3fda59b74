"""nnunetv2_mapo: Model-Agnostic Preference Optimization (MAPO) as a native nnU-Net v2 trainer.

Importing the package registers its trainers with nnU-Net (``nnUNet_extTrainer``). The package itself stays light:
the names below, which pull in torch and nnU-Net, are imported on first access.

Layout (``docs/architecture.md``): :mod:`.method` (plain torch), :mod:`.training` (the nnU-Net trainer and its
variants), :mod:`.evaluation`, :mod:`.benchmark` and :mod:`.commands` (the ``nnunetv2_mapo`` command).
"""

from nnunetv2_mapo import discovery as _discovery

__version__ = "0.11.0"

_discovery.autoregister()

# Public name -> module that defines it.
_LAZY = {
    "nnUNetTrainerMAPO": "nnunetv2_mapo.training.trainer",
    "nnUNetTrainerMAPO_NoWarmup": "nnunetv2_mapo.training.variants.schedule",
    "nnUNetTrainerMAPO_FixedReference": "nnunetv2_mapo.training.variants.schedule",
    "nnUNetTrainerMAPO_OnlinePairs": "nnunetv2_mapo.training.variants.schedule",
    "nnUNetTrainerMAPO_cDPO": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_DPO": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_TargetMargin": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_RPO": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_IPO": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_Hinge": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_SimPO": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_DPOP": "nnunetv2_mapo.training.variants.preference_loss",
    "nnUNetTrainerMAPO_ChannelDropout": "nnunetv2_mapo.training.variants.dropout",
    "nnUNetTrainerDropoutOnly": "nnunetv2_mapo.training.variants.dropout",
    "nnUNetTrainerMAPO_BoundaryRanked": "nnunetv2_mapo.training.variants.pairs",
    "nnUNetTrainerMAPO_GTAnchored": "nnunetv2_mapo.training.variants.pairs",
    "nnUNetTrainerMAPO_GTOverPrediction": "nnunetv2_mapo.training.variants.pairs",
    "nnUNetTrainerMAPO_MirroredPairs": "nnunetv2_mapo.training.variants.pairs",
    "nnUNetTrainerMAPO_MultiObjective": "nnunetv2_mapo.training.variants.pairs",
    "nnUNetTrainerMAPO_PaperFormulation": "nnunetv2_mapo.training.variants.pairs",
    "nnUNetTrainerMAPO_BN": "nnunetv2_mapo.training.variants.networks",
    "nnUNetTrainerMAPO_Primus_S": "nnunetv2_mapo.training.variants.networks",
    "nnUNetTrainerMAPO_Primus_B": "nnunetv2_mapo.training.variants.networks",
    "nnUNetTrainerMAPO_Primus_M": "nnunetv2_mapo.training.variants.networks",
    "nnUNetTrainerMAPO_Primus_L": "nnunetv2_mapo.training.variants.networks",
    "nnUNetTrainerMAPO_Unlabeled": "nnunetv2_mapo.training.variants.unlabeled",
    "nnUNetTrainerPseudoLabel": "nnunetv2_mapo.training.pseudo_label",
    "dpo_loss": "nnunetv2_mapo.method.preference_loss",
    "preference_loss": "nnunetv2_mapo.method.preference_loss",
    "PreferenceLoss": "nnunetv2_mapo.method.preference_loss",
    "PreferenceLossConfig": "nnunetv2_mapo.method.preference_loss",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnunetv2_mapo' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
