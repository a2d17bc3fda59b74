"""The method as plain torch: nothing here knows nnU-Net's trainer.

- :mod:`.dropout`: dropout hooks injected into any network (state-dict keys unchanged)
- :mod:`.scoring`: hypotheses to masks, Dice against the ground truth, choice of (y+, y-)
- :mod:`.preference_loss`: mask log-likelihoods and the preference losses (DPO, cDPO, IPO, hinge, target margin,
  SimPO, DPO-Positive, RPO)
- :mod:`.objectives`: a boundary score for hypotheses, adaptive weights over several preference objectives
- :mod:`.preference_set`: the pairs of one round, their sampling and their saved state
- :mod:`.schedule`: how many pairs a training step carries, which rate each hypothesis uses
- :mod:`.round`: one preference round, from patches to pairs
- :mod:`.uncertainty`: entropy and mutual information of several probability maps (Monte-Carlo dropout, folds)

The named options below are imported by the settings table as well, so this file imports nothing.
"""

LOSS_TYPES = ("sigmoid", "cdpo", "ipo", "hinge", "target_margin", "simpo", "dpop", "rpo")
REFERENCE_FREE_LOSS_TYPES = ("simpo",)  # rounds of these skip the reference pass
# How the preference term is sized beside Dice+CE: its gradient per disagreement voxel at a round's start against
# cross-entropy's largest per-voxel gradient (the default), or the mean of the pairs' losses (the paper's reading)
TERM_SCALES = ("voxel_gradient", "pair_mean")
DROPOUT_MODES = ("element", "channel")
# The reference policy of the preference loss: the network at each round (the paper), or the network at the first
# round, kept for the whole training (its drift from that network stays bounded by the loss's optimum)
REFERENCE_POLICIES = ("round", "first_round")
# y+ the best dropout hypothesis (the paper), the best of the hypotheses and the network's own prediction, or the
# ground truth; y- a dropout hypothesis, or (the last one) the network's own prediction without dropout
PAIRINGS = ("dropout", "dropout_and_prediction", "ground_truth", "ground_truth_over_prediction")
PREDICTION_PAIRINGS = ("ground_truth_over_prediction",)  # rounds of these run no dropout hypotheses
OBJECTIVE_SETS = ("dice", "dice+boundary", "boundary")  # what rounds rank hypotheses by: one pair per objective
