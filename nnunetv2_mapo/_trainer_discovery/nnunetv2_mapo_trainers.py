# Shim module listed through nnUNet_extTrainer (see nnunetv2_mapo/discovery.py). nnU-Net imports it as a top-level
# module and drops it again after the lookup, so it must only re-export the installed classes, by absolute import.
from nnunetv2_mapo.training.pseudo_label import *  # noqa: F401,F403
from nnunetv2_mapo.training.trainer import *  # noqa: F401,F403
from nnunetv2_mapo.training.variants.dropout import *  # noqa: F401,F403
from nnunetv2_mapo.training.variants.networks import *  # noqa: F401,F403
from nnunetv2_mapo.training.variants.pairs import *  # noqa: F401,F403
from nnunetv2_mapo.training.variants.preference_loss import *  # noqa: F401,F403
from nnunetv2_mapo.training.variants.schedule import *  # noqa: F401,F403
from nnunetv2_mapo.training.variants.unlabeled import *  # noqa: F401,F403
