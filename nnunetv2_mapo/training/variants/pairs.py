"""MAPO with other preference pairs, and the paper's formulation under a name of its own."""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

__all__ = [
    "nnUNetTrainerMAPO_BoundaryRanked",
    "nnUNetTrainerMAPO_GTAnchored",
    "nnUNetTrainerMAPO_GTOverPrediction",
    "nnUNetTrainerMAPO_MirroredPairs",
    "nnUNetTrainerMAPO_MultiObjective",
    "nnUNetTrainerMAPO_PaperFormulation",
]


class nnUNetTrainerMAPO_GTAnchored(nnUNetTrainerMAPO):
    """Self-play style pairs (SPIN, arXiv 2401.01335): the ground truth is preferred over the network's worst
    dropout hypothesis, so the preferred mask is never worse than the network's own prediction."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_pairing = "ground_truth"


class nnUNetTrainerMAPO_GTOverPrediction(nnUNetTrainerMAPO):
    """SPIN's own pairs (arXiv 2401.01335): the ground truth is preferred over the network's prediction without
    dropout, the answer it would give, so the term pushes on exactly the voxels it gets wrong now. Rounds run no
    dropout hypotheses (one forward pass per case); cases the network already segments within tau get no pair."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_pairing = "ground_truth_over_prediction"


class nnUNetTrainerMAPO_MirroredPairs(nnUNetTrainerMAPO):
    """The paper's pairs, each drawn in a random mirrored view at every step (the axes nnU-Net mirrors at inference;
    ``nnunetv2_mapo.method.mirroring``): 4 views of each pair in 2D, 8 in 3D, instead of one fixed patch that the DPO
    term fits within an epoch. The round computes the reference log-likelihoods of every view."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_mirror_pairs = True


class nnUNetTrainerMAPO_MultiObjective(nnUNetTrainerMAPO):
    """Pairs ranked by overlap (Dice) and by boundary (surface Dice at one voxel), one pair per objective and item,
    their preference losses combined with adaptive weights from a Gaussian model of the policy's margins (our
    formulation in the spirit of AMoPO, arXiv 2506.07165; ``nnunetv2_mapo.method.objectives``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_objectives = "dice+boundary"


class nnUNetTrainerMAPO_BoundaryRanked(nnUNetTrainerMAPO):
    """Pairs ranked by a quantity Dice+CE cannot express: the surface Dice at one voxel on the patch, which does not
    decompose over voxels. The network's own prediction without dropout is a candidate beside the K hypotheses, so
    y+ is never worse than the network's answer by that measure (``docs/method.md``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_objectives = "boundary"
        self.mapo_pairing = "dropout_and_prediction"


class nnUNetTrainerMAPO_PaperFormulation(nnUNetTrainerMAPO):
    """The project's reference formulation of the paper (``docs/method.md``), pinned: it stays this when the
    defaults of ``nnUNetTrainerMAPO`` change by measurement (they did in 0.9). Element-wise dropout hypotheses at
    rates 0.05-0.4, y+ the best and y- the worst hypothesis at least 0.05 Dice below it, the sigmoid DPO loss with
    beta 0.1 and weight 0.5 on the mean of the pairs' losses, a round every 50 of 1000 epochs after a 10% warm-up,
    pairs drawn without a bound on their reuse. Measured worse than ``nnUNetTrainer`` (``docs/benchmarks.md``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mapo_regen_every = 50
        self.mapo_num_hypotheses = 8
        self.mapo_dropout_rates = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
        self.mapo_dropout_mode = "element"
        self.mapo_pair_margin = 0.05
        self.mapo_pairing = "dropout"
        self.mapo_objectives = "dice"
        self.mapo_beta = 0.1
        self.mapo_weight = 0.5
        self.mapo_loss_type = "sigmoid"
        self.mapo_term_scale = "pair_mean"
        self.mapo_max_pair_uses = None
