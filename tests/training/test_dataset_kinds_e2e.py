"""Every kind of nnU-Net dataset through the real command line: supported, or refused at start with a reason."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.commands.workspace import CommandFailed, Workspace

pytestmark = pytest.mark.e2e

TINY = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1,
        "mapo_warmup_epochs": 1, "mapo_num_hypotheses": 4, "mapo_pair_margin": 0.01}


def _final_logging(workspace: Workspace, dataset_id: int, configuration: str, plans: str = "nnUNetPlans") -> dict:
    folder = workspace.output_folder(dataset_id, "nnUNetTrainerMAPO", configuration, 0, plans)
    return torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)["logging"]


def test_regions_with_ignore_label_and_two_channels(tmp_path) -> None:
    """BraTS-style overlapping regions (regions_class_order), an ignore label, two input channels."""
    workspace = Workspace(str(tmp_path))
    write_synthetic_dataset(workspace.raw, 911, "RegionsIgnore", dim=2, num_cases=10, shape=(48, 48),
                            num_channels=2, kind="regions_ignore", seed=11)
    workspace.plan_and_preprocess(911, ["2d"])
    output = workspace.train(911, "2d", 0, "nnUNetTrainerMAPO", "cpu", TINY)
    assert "MAPO round 0 (epoch 1)" in output
    logging = _final_logging(workspace, 911, "2d")
    assert logging["mapo_num_pairs"][1] > 0 and math.isfinite(logging["mapo_dpo_loss"][1])
    summary = json.load(open(os.path.join(workspace.output_folder(911, "nnUNetTrainerMAPO", "2d", 0),
                                          "validation", "summary.json")))
    assert len(summary["mean"]) == 2  # two regions evaluated


def test_single_class_empty_cases_2d_config_of_3d_data_and_cascade_refused(tmp_path) -> None:
    """One foreground class, cases without any foreground, the 2d configuration of a 3D dataset; the cascade is
    refused before any data is loaded."""
    workspace = Workspace(str(tmp_path))
    write_synthetic_dataset(workspace.raw, 912, "SingleClass3D", dim=3, num_cases=10, shape=(16, 40, 40),
                            num_classes=1, num_empty_cases=3, seed=12)
    workspace.plan_and_preprocess(912, ["2d"])
    output = workspace.train(912, "2d", 0, "nnUNetTrainerMAPO", "cpu", TINY)
    assert "MAPO round 0 (epoch 1)" in output
    assert len(_final_logging(workspace, 912, "2d")["mapo_num_pairs"]) == 2

    # A cascade configuration (as nnU-Net plans it for large images): 3d_cascade_fullres uses 3d_lowres's output.
    folder = os.path.join(workspace.preprocessed, workspace.dataset_name(912))
    plans = json.load(open(os.path.join(folder, "nnUNetPlans.json")))
    plans["plans_name"] = "nnUNetPlansCascade"
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    json.dump(plans, open(os.path.join(folder, "nnUNetPlansCascade.json"), "w"))
    with pytest.raises(CommandFailed) as refused:
        workspace.train(912, "3d_cascade_fullres", 0, "nnUNetTrainerMAPO", "cpu", TINY,
                        extra_args=["-p", "nnUNetPlansCascade"])
    assert "does not support the cascade" in str(refused.value)
    assert "Epoch 0" not in str(refused.value)
