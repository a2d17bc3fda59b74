"""Tests of ``nnunetv2_mapo.benchmark.trainers``: nnUNetTrainer plus a budget, nothing else."""

from __future__ import annotations

import json

import pytest


def test_trainer_module_applies_only_nnunet_keys() -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_mapo.benchmark.trainers import (
        nnunet_overrides,
        nnUNetTrainerBenchmarkBaseline,
        nnUNetTrainerBenchmarkWarmup,
        schedule_epochs,
    )
    from nnunetv2_mapo.training.settings import MAPOConfigError

    environ = {"nnUNet_mapo_config": json.dumps({"num_epochs": 3, "initial_lr": 0.02, "mapo_beta": 0.5})}
    assert nnunet_overrides(environ) == {"num_epochs": 3, "initial_lr": 0.02}
    with pytest.raises(MAPOConfigError, match="num_epochs"):
        nnunet_overrides({"nnUNet_mapo_config": '{"num_epochs": 0}'})
    assert schedule_epochs(3, {}) == 3 and schedule_epochs(3, {"nnUNet_benchmark_schedule_epochs": "8"}) == 8
    for bad in ("2", "x", "0"):
        with pytest.raises(MAPOConfigError):
            schedule_epochs(3, {"nnUNet_benchmark_schedule_epochs": bad})
    # Otherwise exactly nnU-Net's trainer: the baseline overrides only set-up and log lines (settings, GPU memory).
    assert nnUNetTrainerBenchmarkBaseline.__bases__ == (nnUNetTrainer,)
    own = {k for k, v in vars(nnUNetTrainerBenchmarkBaseline).items() if callable(v)}
    assert own == {"__init__", "initialize", "on_train_start", "on_train_end"}
    assert {k for k, v in vars(nnUNetTrainerBenchmarkWarmup).items() if callable(v)} == {
        "configure_optimizers", "perform_actual_validation"}
    from nnunetv2_mapo.benchmark.trainers import nnUNetTrainerBenchmarkEqualCompute

    # the equal-compute arm is the baseline under another name (its iterations come from the benchmark's settings)
    assert nnUNetTrainerBenchmarkEqualCompute.__bases__ == (nnUNetTrainerBenchmarkBaseline,)
    assert not {k for k, v in vars(nnUNetTrainerBenchmarkEqualCompute).items() if callable(v)}
