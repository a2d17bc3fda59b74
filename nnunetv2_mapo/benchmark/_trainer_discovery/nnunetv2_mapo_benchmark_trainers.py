# Shim module that the benchmark lists through nnUNet_extTrainer in its own processes only, so that its trainers do
# not appear in every user's trainer lookup. Re-exports the installed classes by absolute import (see discovery.py).
from nnunetv2_mapo.benchmark.trainers import *  # noqa: F401,F403
