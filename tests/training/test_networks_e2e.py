"""MAPO on nnU-Net's other networks through the real command line: BatchNorm U-Net, the Primus Transformer and the
residual-encoder plans, each planned, trained with the preference term active, and predicted with nnUNetv2_predict."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.commands.workspace import Workspace

pytestmark = pytest.mark.e2e

DATASET = 913
TINY = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1,
        "mapo_warmup_epochs": 1, "mapo_num_hypotheses": 4, "mapo_pair_margin": 0.0, "mapo_round_pictures": 0}
EVAL_PASS = "the pair rows get an eval-mode forward pass of their own"


@pytest.fixture(scope="module")
def ws3d(tmp_path_factory) -> Workspace:
    workspace = Workspace(str(tmp_path_factory.mktemp("networks")))
    # 16^3: Primus cuts the patch into 8^3 tokens, so the planned patch must be divisible by 8.
    write_synthetic_dataset(workspace.raw, DATASET, "Networks3D", dim=3, num_cases=6, shape=(16, 16, 16), seed=13)
    workspace.plan_and_preprocess(DATASET, ["3d_fullres"])
    return workspace


@pytest.mark.parametrize(("trainer", "plans", "planner", "eval_pass"), [
    ("nnUNetTrainerMAPO_BN", "nnUNetPlans", None, True),
    ("nnUNetTrainerMAPO_Primus_S", "nnUNetPlans", None, True),
    ("nnUNetTrainerMAPO", "nnUNetResEncUNetMPlans", "nnUNetPlannerResEncM", False),
])
def test_train_and_predict(ws3d: Workspace, tmp_path: Path, trainer: str, plans: str, planner: str | None,
                           eval_pass: bool) -> None:
    if planner:
        ws3d.plan_and_preprocess(DATASET, ["3d_fullres"], planner=planner, plans=plans)
    output = ws3d.train(DATASET, "3d_fullres", 0, trainer, "cpu", TINY, extra_args=["-p", plans])
    assert "MAPO round 0 (epoch 1)" in output
    assert (EVAL_PASS in output) == eval_pass  # BatchNorm and DropPath differ between modes; InstanceNorm does not
    fold = ws3d.output_folder(DATASET, trainer, "3d_fullres", 0, plans)
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    logging = checkpoint["logging"]
    assert logging["mapo_num_pairs"][1] > 0 and math.isfinite(logging["mapo_dpo_loss"][1])  # the DPO term ran

    cases = ws3d.validation_cases(DATASET, 0)
    images = ws3d.stage_images(DATASET, cases, str(tmp_path / "in"))
    ws3d.predict(DATASET, "3d_fullres", 0, trainer, "cpu", images, str(tmp_path / "out"), plans=plans)
    for case in cases:
        predicted = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
        assert predicted.GetSize() == (16, 16, 16)
        assert set(np.unique(sitk.GetArrayFromImage(predicted))) <= {0, 1, 2}
