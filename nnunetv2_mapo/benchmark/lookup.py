"""The benchmark's trainers in nnU-Net's trainer lookup: listed only in the benchmark's own processes."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence

from nnunetv2_mapo import discovery

BENCHMARK_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_trainer_discovery")


def with_benchmark_trainers(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` whose ``nnUNet_extTrainer`` also lists the benchmark's trainer folder.

    The benchmark's trainers are found only in the processes the benchmark starts, not in every user's lookup.
    """
    folders = [p for p in environ.get(discovery.ENV_VAR, "").split(os.pathsep) if p.strip()]
    if BENCHMARK_TRAINER_FOLDER not in folders:
        folders.append(BENCHMARK_TRAINER_FOLDER)
    return {**environ, discovery.ENV_VAR: os.pathsep.join(folders)}


def find_trainer_class(name: str) -> type:
    """nnU-Net's lookup of a trainer class by name, with the benchmark's trainers listed."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    previous = os.environ.get(discovery.ENV_VAR)
    os.environ[discovery.ENV_VAR] = with_benchmark_trainers(os.environ)[discovery.ENV_VAR]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return recursive_find_trainer_class_by_name(name)
    finally:
        if previous is None:
            os.environ.pop(discovery.ENV_VAR, None)
        else:
            os.environ[discovery.ENV_VAR] = previous


def check_trainers(names: Sequence[str], mapo_trainer: str) -> None:
    """Checks that nnU-Net finds every trainer of a benchmark, and that its MAPO arm is a MAPO trainer (or the
    semi-supervised baseline, ``nnUNetTrainerPseudoLabel``, compared the same way).

    Raises:
        BenchmarkInputError: Naming the trainer.
    """
    from nnunetv2_mapo.benchmark.spec import BenchmarkInputError
    from nnunetv2_mapo.training.pseudo_label import nnUNetTrainerPseudoLabel
    from nnunetv2_mapo.training.trainer import nnUNetTrainerMAPO

    for name in names:
        try:
            cls = find_trainer_class(name)
        except (RuntimeError, AssertionError) as err:
            raise BenchmarkInputError(f"nnU-Net cannot find the trainer {name!r}: {err}") from err
        if name == mapo_trainer and not issubclass(cls, (nnUNetTrainerMAPO, nnUNetTrainerPseudoLabel)):
            raise BenchmarkInputError(f"--mapo-trainer {name} is not a subclass of nnUNetTrainerMAPO (or "
                                      f"nnUNetTrainerPseudoLabel, the semi-supervised baseline).")


# ------------------------------------------------------------------------------------------------- benchmark
