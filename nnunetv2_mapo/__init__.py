"""nnunetv2_mapo: Model-Agnostic Preference Optimization (MAPO) as a native nnU-Net v2 trainer.

Importing the package registers its trainers with nnU-Net (``nnUNet_extTrainer``). The package itself stays light:
the trainer classes, which pull in torch and nnU-Net, are imported on first access.
"""

from nnunetv2_mapo import discovery as _discovery

__version__ = "0.3.0"

_discovery.autoregister()

_LAZY_TRAINERS = (
    "nnUNetTrainerMAPO",
    "nnUNetTrainerMAPO_NoWarmup",
    "nnUNetTrainerMAPO_IPO",
    "nnUNetTrainerMAPO_Hinge",
    "nnUNetTrainerMAPO_ChannelDropout",
)


def __getattr__(name: str):
    if name in _LAZY_TRAINERS:
        from nnunetv2_mapo import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'nnunetv2_mapo' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY_TRAINERS]
