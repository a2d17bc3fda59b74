"""nnU-Net glue: the trainer ``nnUNetTrainerMAPO``, its settings, loss module, metrics, checkpoints and plots.

- :mod:`.trainer`: ``nnUNetTrainerMAPO``, which wires nnU-Net's hooks to the modules below
- :mod:`.settings`: ranges of the trainer's hyperparameters and ``nnUNet_mapo_config``
- :mod:`.preference_round`: a preference round in nnU-Net's terms (cases, patches, seeds, ranks, log lines)
- :mod:`.loss`: nnU-Net's Dice+CE plus the preference term on the pair rows of the batch
- :mod:`.metrics`: every quantity a step or a round logs, declared once
- :mod:`.checkpointing`, :mod:`.distributed`, :mod:`.progress`: state beside checkpoints, DDP, ``progress_mapo.png``
- :mod:`.variants`: small subclasses that change one thing, as in nnU-Net's ``variants/`` folder
"""
