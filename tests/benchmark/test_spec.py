"""Tests of ``nnunetv2_mapo.benchmark.spec`` and of the benchmark's trainers."""

from __future__ import annotations

import pytest
from benchmark_helpers import spec

from nnunetv2_mapo.benchmark.spec import (
    BenchmarkInputError,
    benchmark_name,
    shared_arm_name,
    trainer_settings,
    validate_spec,
)


def test_trainer_settings_per_role() -> None:
    s = spec(shared_warmup_epochs=2, settings={"mapo_beta": 0.5, "initial_lr": 0.02})
    warmup, baseline, mapo = (trainer_settings(s, role, 3) for role in ("warmup", "baseline", "mapo"))
    assert warmup == {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 2,
                      "save_every": 5, "initial_lr": 0.02}
    assert baseline == {**warmup, "num_epochs": 6}
    assert mapo == {**baseline, "mapo_beta": 0.5, "mapo_seed": 3, "mapo_warmup_epochs": 2}
    assert "mapo_warmup_epochs" not in trainer_settings(spec(), "mapo", 0)
    # the equal-compute arm: the baseline's settings with its own iterations per epoch
    assert trainer_settings(s, "equal_compute", 3, iterations=7) == {**baseline, "num_iterations_per_epoch": 7}
    with pytest.raises(ValueError):
        trainer_settings(s, "other", 0)


def test_the_unlabeled_folder_goes_to_the_mapo_arm_only() -> None:
    semi = spec(train_cases=5, unlabeled_cases=3)
    assert trainer_settings(semi, "mapo", 1, unlabeled_folder="/u")["mapo_unlabeled_folder"] == "/u"
    assert "mapo_unlabeled_folder" not in trainer_settings(semi, "baseline", 1, unlabeled_folder="/u")
    assert "mapo_unlabeled_folder" not in trainer_settings(semi, "mapo", 1)
    assert "__unlabeled3" in benchmark_name(semi, "Dataset990_Toy")


def test_shared_arms_ignore_the_mapo_trainer_and_its_settings_only() -> None:
    base = spec(settings={"mapo_beta": 0.5, "initial_lr": 0.02})
    name = shared_arm_name(base, "Dataset990_Toy", "baseline")
    assert name.startswith("Dataset990_Toy__baseline__")
    # what MAPO alone reads does not change the baseline's folder; the warm-up shares it
    assert shared_arm_name(spec(settings={"initial_lr": 0.02}, mapo_trainer="nnUNetTrainerMAPO_DPOP",
                                equal_compute=True, seeds=3), "Dataset990_Toy", "warmup") == name
    # what the baseline's training reads does
    for changes in ({"settings": {"initial_lr": 0.03}}, {"iterations": 4}, {"train_cases": 20}, {"batch_size": 8},
                    {"configuration": "3d_fullres"}, {"shared_warmup_epochs": 1},
                    {"train_cases": 20, "group_pattern": "^(seq\\d+)"}, {"train_cases": 20, "unlabeled_cases": 5}):
        assert shared_arm_name(spec(**{"settings": {"initial_lr": 0.02}, **changes}), "Dataset990_Toy",
                               "baseline") != name, changes
    for later in ("group_pattern", "unlabeled_cases"):  # absent unless given: earlier shared arms keep their names
        assert later not in base.comparable()
    equal = shared_arm_name(base, "Dataset990_Toy", "equal_compute", 9)
    assert equal.startswith("Dataset990_Toy__equal_compute__")
    assert equal != shared_arm_name(base, "Dataset990_Toy", "equal_compute", 10)
    with pytest.raises(ValueError, match="not 'mapo'"):
        shared_arm_name(base, "Dataset990_Toy", "mapo")


@pytest.mark.parametrize(("changes", "message"), [
    ({"seeds": 0}, "--seeds must be an integer >= 1"),
    ({"epochs": 0}, "--epochs"),
    ({"batch_size": 0}, "--batch-size"),
    ({"folds": ()}, "at least one fold"),
    ({"folds": (0, 0)}, "repeated"),
    ({"shared_warmup_epochs": -1}, "--shared-warmup-epochs"),
    ({"settings": {"num_epochs": 3}}, "set by the benchmark"),
    ({"settings": {"mapo_seed": 3}}, "mapo_seed"),
    ({"settings": {"mapo_warmup_epochs": 1}, "shared_warmup_epochs": 2}, "remove mapo_warmup_epochs"),
    ({"settings": {"mapo_warmup_epochs": 4}}, "leaves no epoch"),
    ({"device": "tpu"}, "--device"),
    ({"train_cases": 0}, "--train-cases"),
    ({"train_cases": 5, "split_file": "split.json"}, "not both"),
    ({"train_cases": 5, "folds": (0, 1)}, "one split, fold 0"),
    ({"group_pattern": "^(seq)"}, "give one of them"),
    ({"group_pattern": "^(seq", "train_cases": 5}, "not a regular expression"),
    ({"group_pattern": "^seq", "train_cases": 5}, "has no group"),
    ({"unlabeled_cases": 4}, "held-out cases of --train-cases or --split-file"),
    ({"unlabeled_cases": 0, "train_cases": 5}, "--unlabeled-cases must be an integer >= 1"),
    ({"unlabeled_cases": 4, "train_cases": 5, "settings": {"mapo_unlabeled_folder": "/x"}}, "set by --unlabeled"),
])
def test_validate_spec_rejects(changes: dict, message: str) -> None:
    with pytest.raises(BenchmarkInputError, match=message):
        validate_spec(spec(**changes))
