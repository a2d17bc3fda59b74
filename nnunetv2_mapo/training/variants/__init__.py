"""Variants of ``nnUNetTrainerMAPO``: each a tiny subclass that changes one thing, as nnU-Net's ``variants/``.

Combine them by multiple inheritance, like nnU-Net's own variants:
``class nnUNetTrainerMAPO_IPO_NoWarmup(nnUNetTrainerMAPO_IPO, nnUNetTrainerMAPO_NoWarmup): pass``.

- :mod:`.preference_loss`: other preference losses (IPO, hinge)
- :mod:`.schedule`: other round schedules (no warm-up)
- :mod:`.dropout`: other hypothesis generators (channel dropout)
- :mod:`.pairs`: other preference pairs (ground truth preferred; Dice and boundary objectives), and the paper's
  formulation pinned
- :mod:`.networks`: MAPO on nnU-Net's other trainers' networks (BatchNorm U-Net, Primus Transformers)
"""
