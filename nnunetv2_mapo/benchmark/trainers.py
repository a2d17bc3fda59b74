"""Trainers of ``nnunetv2_mapo benchmark``: plain ``nnUNetTrainer`` plus the benchmark's budget, nothing else.

nnU-Net's own ``nnUNetTrainer`` reads no environment variable for its budget (epochs, iterations), so the benchmark
cannot shorten it through nnU-Net's command line. :class:`nnUNetTrainerBenchmarkBaseline` is ``nnUNetTrainer`` with
exactly one addition: it applies the nnU-Net keys of ``nnUNet_mapo_config`` (``num_epochs``,
``num_iterations_per_epoch``, ``num_val_iterations_per_epoch``, ``initial_lr``, ``weight_decay``,
``oversample_foreground_percent``, ``save_every``; :data:`nnunetv2_mapo.training.settings.NNUNET_SETTINGS`),
checked by :func:`nnunetv2_mapo.training.settings.validate_setting` like the MAPO trainer does. ``mapo_*`` keys are
ignored. Network, data, augmentation, loss, optimizer, schedule, checkpoints and validation are nnU-Net's, unchanged.

:class:`nnUNetTrainerBenchmarkEqualCompute` is the same trainer under another name: the equal-compute arm, whose
iterations per epoch the benchmark raises by MAPO's extra sample-passes.

:class:`nnUNetTrainerBenchmarkWarmup` runs the first ``num_epochs`` epochs of a longer training: its poly
learning-rate schedule spans ``nnUNet_benchmark_schedule_epochs`` epochs (the warm-up plus the training that
continues from it), so a run continued from its checkpoint with ``--c`` sees the same learning rates as one
uninterrupted training. It skips nnU-Net's final validation (a warm-up is not evaluated).
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_mapo.training.gpu_memory import peak_gpu_memory_line
from nnunetv2_mapo.training.settings import (
    ENV_VAR,
    NNUNET_SETTINGS,
    MAPOConfigError,
    config_from_environment,
    validate_setting,
)

__all__ = ["nnUNetTrainerBenchmarkBaseline", "nnUNetTrainerBenchmarkEqualCompute", "nnUNetTrainerBenchmarkWarmup"]

SCHEDULE_ENV_VAR = "nnUNet_benchmark_schedule_epochs"
_NNUNET_KEYS = frozenset(s.name for s in NNUNET_SETTINGS)


def nnunet_overrides(environ: dict[str, str] | None = None) -> dict:
    """The nnU-Net keys of ``nnUNet_mapo_config``, validated; ``mapo_*`` keys are dropped.

    Args:
        environ: Environment to read (default ``os.environ``).

    Returns:
        ``{attribute: value}`` for the keys of :data:`nnunetv2_mapo.training.settings.NNUNET_SETTINGS` that the
        variable sets.

    Raises:
        MAPOConfigError: The variable is malformed or holds an invalid key or value.
    """
    return {k: v for k, v in config_from_environment(environ).items() if k in _NNUNET_KEYS}


def schedule_epochs(num_epochs: int, environ: dict[str, str] | None = None) -> int:
    """The length of the learning-rate schedule of a warm-up: ``nnUNet_benchmark_schedule_epochs``.

    Args:
        num_epochs: The epochs the warm-up itself trains.
        environ: Environment to read (default ``os.environ``).

    Returns:
        The variable's value, or ``num_epochs`` when it is unset.

    Raises:
        MAPOConfigError: Not an integer >= 1, or smaller than ``num_epochs``.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(SCHEDULE_ENV_VAR, "").strip()
    if not text:
        return num_epochs
    try:
        value = validate_setting("num_epochs", int(text))
    except (ValueError, MAPOConfigError) as err:
        raise MAPOConfigError(f"{SCHEDULE_ENV_VAR}={text!r} is invalid: expected an integer >= 1.") from err
    if value < num_epochs:
        raise MAPOConfigError(f"{SCHEDULE_ENV_VAR}={value} is smaller than num_epochs ({num_epochs}); the schedule "
                              f"must cover the warm-up.")
    return value


class nnUNetTrainerBenchmarkBaseline(nnUNetTrainer):
    """``nnUNetTrainer`` whose budget (and other nnU-Net attributes) can be set through ``nnUNet_mapo_config``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.benchmark_overrides: dict = {}

    def initialize(self):
        if not self.was_initialized:  # before the optimizer and the data loaders exist: bad settings fail fast
            self.benchmark_overrides = nnunet_overrides()
            for name, value in self.benchmark_overrides.items():
                setattr(self, name, value)
        super().initialize()

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"nnUNetTrainer with {ENV_VAR} overrides (nnU-Net keys only): "
                               f"{self.benchmark_overrides}")

    def on_train_end(self):
        super().on_train_end()
        if (line := peak_gpu_memory_line(self.device)) is not None:  # as nnUNetTrainerMAPO logs it
            self.print_to_log_file(line)


class nnUNetTrainerBenchmarkEqualCompute(nnUNetTrainerBenchmarkBaseline):
    """The baseline given MAPO's extra compute as extra iterations per epoch (the benchmark sets them through
    ``nnUNet_mapo_config``; :mod:`nnunetv2_mapo.benchmark.compute`). A class of its own for its own results folder."""


class nnUNetTrainerBenchmarkWarmup(nnUNetTrainerBenchmarkBaseline):
    """The first ``num_epochs`` epochs of a ``nnUNet_benchmark_schedule_epochs``-epoch training, not validated."""

    def configure_optimizers(self):
        # nnU-Net builds its PolyLRScheduler over self.num_epochs; let it span the whole (warm-up + rest) training.
        trained, self.num_epochs = self.num_epochs, schedule_epochs(self.num_epochs)
        try:
            return super().configure_optimizers()
        finally:
            self.num_epochs = trained

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Benchmark warm-up: final validation skipped (the warm-up is not evaluated).")
