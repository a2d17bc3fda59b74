"""End to end: nnUNetTrainerMAPO_Unlabeled and nnUNetTrainerPseudoLabel through nnUNetv2_train with a folder of
unlabeled scans (synthetic), the cache of their preprocessing, and every refusal before training."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from e2e_helpers import wait_for_log

from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.commands.workspace import CommandFailed, Workspace, nnunet_command
from nnunetv2_mapo.training.unlabeled_data import MANIFEST, UnlabeledDataError, prepare_unlabeled_cache

pytestmark = pytest.mark.e2e

DATASET = 903
TINY = {"num_epochs": 4, "num_iterations_per_epoch": 6, "num_val_iterations_per_epoch": 1, "mapo_warmup_epochs": 1,
        "mapo_unlabeled_confidence": 0.5}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    workspace = Workspace(str(tmp_path_factory.mktemp("unlabeled")))
    write_synthetic_dataset(workspace.raw, DATASET, "Semi2D", dim=2, num_cases=12, seed=3)
    workspace.plan_and_preprocess(DATASET, ["2d"])
    return workspace


@pytest.fixture(scope="module")
def unlabeled(ws: Workspace, tmp_path_factory) -> str:
    """Eight scans of another synthetic dataset of the same task, renamed, without their labels."""
    other = write_synthetic_dataset(str(tmp_path_factory.mktemp("other")), 904, "More", dim=2, num_cases=8, seed=9)
    folder = os.path.join(ws.root, "imagesUnlabeled")
    os.makedirs(folder)
    for name in os.listdir(os.path.join(other, "imagesTr")):
        shutil.copy(os.path.join(other, "imagesTr", name), os.path.join(folder, "scan_" + name))
    return folder


def _final_logging(fold: str) -> dict:
    return torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)["logging"]


def test_mapo_unlabeled_trains_with_unlabeled_pairs_and_resumes_them(ws: Workspace, unlabeled: str) -> None:
    settings = {**TINY, "num_epochs": 5, "mapo_regen_every": 3, "save_every": 1, "mapo_unlabeled_folder": unlabeled}
    fold = ws.output_folder(DATASET, "nnUNetTrainerMAPO_Unlabeled", "2d", 0)
    env = ws.environment({"nnUNet_mapo_config": json.dumps(settings), "nnUNet_n_proc_DA": "0"})
    command = [nnunet_command("nnUNetv2_train"), str(DATASET), "2d", "0", "-tr", "nnUNetTrainerMAPO_Unlabeled",
               "-device", "cpu"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.makedirs(fold, exist_ok=True)
        wait_for_log(fold, "Epoch 3", process)  # after round 0 (epoch 1) and the checkpoint of epoch 2
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    first_log = sorted(Path(fold).glob("training_log_*.txt"))[-1].read_text()
    assert "8 unlabeled cases" in first_log and "MAPO round 0, unlabeled:" in first_log

    output = ws.train(DATASET, "2d", 0, "nnUNetTrainerMAPO_Unlabeled", "cpu", settings, extra_args=["--c"])
    assert "MAPO round 0" not in output and "MAPO round 1, unlabeled:" in output  # the set of round 0 was restored
    assert "preprocessing" not in output  # the cache of the first start is reused
    logging = _final_logging(fold)
    rounds = [math.isfinite(v) for v in logging["mapo_unlabeled_pairs"]]
    assert rounds == [False, True, False, False, True]
    unlabeled_pairs = logging["mapo_unlabeled_pairs"][1]
    assert unlabeled_pairs > 0
    # the set in use after round 0 holds the labeled and the unlabeled pairs (epoch 2 ran on the restored set)
    assert logging["mapo_num_pairs"][2] == logging["mapo_num_pairs"][1] >= unlabeled_pairs + 1
    assert logging["mapo_unlabeled_items"][1] == 8
    assert logging["mapo_regen_seconds"][1] >= logging["mapo_unlabeled_seconds"][1] > 0
    cache = next(Path(ws.preprocessed, f"Dataset{DATASET}_Semi2D").glob("nnUNetPlans_2d_unlabeled/*"))
    assert len(json.loads((cache / MANIFEST).read_text())["cases"]) == 8
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))


def test_pseudo_label_trainer_trains_on_confident_unlabeled_patches(ws: Workspace, unlabeled: str) -> None:
    settings = {**TINY, "mapo_unlabeled_folder": unlabeled, "mapo_pairs_per_step": 2, "mapo_beta": 0.5}
    output = ws.train(DATASET, "2d", 1, "nnUNetTrainerPseudoLabel", "cpu", settings)
    assert "ignores ['mapo_beta']" in output  # MAPO's settings in a shared file are ignored, and said so
    logging = _final_logging(ws.output_folder(DATASET, "nnUNetTrainerPseudoLabel", "2d", 1))
    assert logging["pseudo_unlabeled_rows"][0] == 0  # the warm-up epoch draws none
    assert sum(logging["pseudo_unlabeled_rows"][1:]) > 0
    shares = logging["pseudo_unlabeled_kept_share"][1:]
    assert all(0.0 <= s <= 1.0 for s in shares) and math.isnan(logging["pseudo_unlabeled_kept_share"][0])


@pytest.mark.parametrize(("trainer", "settings", "expected"), [
    ("nnUNetTrainerMAPO", {"mapo_unlabeled_folder": "UNLABELED"}, "nnUNetTrainerMAPO does not read"),
    ("nnUNetTrainerMAPO_Unlabeled", {}, "No unlabeled folder is set"),
    ("nnUNetTrainerPseudoLabel", {"mapo_unlabeled_folder": "/no/such/folder"}, "does not exist"),
    ("nnUNetTrainerMAPO_Unlabeled", {"mapo_unlabeled_folder": "LEAK_BY_NAME"}, "also labeled cases"),
])
def test_bad_unlabeled_input_stops_before_training(ws: Workspace, unlabeled: str, tmp_path: Path, trainer: str,
                                                   settings: dict, expected: str) -> None:
    if settings.get("mapo_unlabeled_folder") == "UNLABELED":
        settings = {"mapo_unlabeled_folder": unlabeled}
    elif settings.get("mapo_unlabeled_folder") == "LEAK_BY_NAME":
        source = os.path.join(ws.raw, f"Dataset{DATASET}_Semi2D", "imagesTr", "case_000_0000.nii.gz")
        os.makedirs(tmp_path / "leak")
        shutil.copy(source, tmp_path / "leak" / "case_000_0000.nii.gz")
        settings = {"mapo_unlabeled_folder": str(tmp_path / "leak")}
    with pytest.raises(CommandFailed) as failure:
        ws.train(DATASET, "2d", 2, trainer, "cpu", {**TINY, **settings})
    assert expected in str(failure.value)
    assert "Epoch 0" not in str(failure.value)


def test_an_unlabeled_copy_of_a_labeled_image_under_another_name_is_refused(ws: Workspace, tmp_path: Path) -> None:
    source = os.path.join(ws.raw, f"Dataset{DATASET}_Semi2D", "imagesTr", "case_003_0000.nii.gz")
    os.makedirs(tmp_path / "copy")
    shutil.copy(source, tmp_path / "copy" / "renamed_0000.nii.gz")
    with pytest.raises(CommandFailed) as failure:
        ws.train(DATASET, "2d", 2, "nnUNetTrainerPseudoLabel", "cpu",
                 {**TINY, "mapo_unlabeled_folder": str(tmp_path / "copy")})
    message = str(failure.value)
    assert re.search(r"Unlabeled case renamed in \S+ is the same image as the labeled case case_003", message)
    assert "Epoch 0" not in message


def test_the_cache_preprocesses_each_case_once_and_refuses_other_plans(ws: Workspace, tmp_path: Path) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = os.path.join(ws.preprocessed, f"Dataset{DATASET}_Semi2D")
    plans = PlansManager(os.path.join(base, "nnUNetPlans.json"))
    configuration = plans.get_configuration("2d")
    dataset_json = json.loads(Path(base, "dataset.json").read_text())
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in ("case_004", "case_005"):  # labeled images, renamed: compared only with the "labeled" cases below
        shutil.copy(os.path.join(ws.raw, f"Dataset{DATASET}_Semi2D", "imagesTr", f"{case}_0000.nii.gz"),
                    folder / f"u{case}_0000.nii.gz")
    labeled = nnUNetDatasetBlosc2(os.path.join(base, "nnUNetPlans_2d"), ["case_000", "case_001"])
    lines: list[str] = []
    preprocessed = os.path.join(base, "nnUNetPlans_2d")
    cache, keys = prepare_unlabeled_cache(str(folder), preprocessed, plans, configuration, dataset_json, labeled,
                                          lines.append)
    assert keys == ["ucase_004", "ucase_005"] and len(lines) == 1 and "2 unlabeled case(s)" in lines[0]
    data = nnUNetDatasetBlosc2(cache, keys).load_case("ucase_004")[0]
    original = nnUNetDatasetBlosc2(preprocessed, ["case_004"]).load_case("case_004")[0]
    assert torch.equal(torch.from_numpy(data[:]), torch.from_numpy(original[:]))  # the plans' own preprocessing

    lines.clear()
    prepare_unlabeled_cache(str(folder), preprocessed, plans, configuration, dataset_json, labeled, lines.append)
    assert lines == []  # nothing to do
    os.utime(folder / "ucase_005_0000.nii.gz", (1, 1))  # a changed source file is preprocessed again
    prepare_unlabeled_cache(str(folder), preprocessed, plans, configuration, dataset_json, labeled, lines.append)
    assert len(lines) == 1 and "1 unlabeled case(s)" in lines[0]

    with pytest.raises(UnlabeledDataError, match="same image as the labeled case case_004"):
        prepare_unlabeled_cache(str(folder), preprocessed, plans, configuration, dataset_json,
                                nnUNetDatasetBlosc2(preprocessed, ["case_004"]), lines.append)

    configuration.configuration["spacing"] = [2.0, 2.0]  # plans changed after the cache was made
    with pytest.raises(UnlabeledDataError, match="other plans.*Delete"):
        prepare_unlabeled_cache(str(folder), preprocessed, plans, configuration, dataset_json, labeled, lines.append)


def test_both_trainers_on_3d_regions_with_an_ignore_label(tmp_path: Path) -> None:
    """3D, overlapping regions and an ignore label: the consensus and the pseudo-labels take the regions' layout."""
    workspace = Workspace(str(tmp_path / "ws"))
    write_synthetic_dataset(workspace.raw, 913, "Regions3D", dim=3, num_cases=8, shape=(16, 24, 24),
                            kind="regions_ignore", seed=13)
    workspace.plan_and_preprocess(913, ["3d_fullres"])
    other = write_synthetic_dataset(str(tmp_path / "other"), 914, "More3D", dim=3, num_cases=4, shape=(16, 24, 24),
                                    kind="regions_ignore", seed=14)
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for name in os.listdir(os.path.join(other, "imagesTr")):
        shutil.copy(os.path.join(other, "imagesTr", name), folder / ("u" + name))
    settings = {**TINY, "num_epochs": 2, "num_iterations_per_epoch": 3, "mapo_num_hypotheses": 4,
                "mapo_unlabeled_folder": str(folder)}
    output = workspace.train(913, "3d_fullres", 0, "nnUNetTrainerMAPO_Unlabeled", "cpu", settings)
    assert "MAPO round 0, unlabeled:" in output
    fold = workspace.output_folder(913, "nnUNetTrainerMAPO_Unlabeled", "3d_fullres", 0)
    assert _final_logging(fold)["mapo_unlabeled_items"][1] == 4
    pseudo = {k: v for k, v in settings.items() if k != "mapo_num_hypotheses"} | {"mapo_pairs_per_step": 2}
    workspace.train(913, "3d_fullres", 0, "nnUNetTrainerPseudoLabel", "cpu", pseudo)
    logging = _final_logging(workspace.output_folder(913, "nnUNetTrainerPseudoLabel", "3d_fullres", 0))
    assert math.isfinite(logging["pseudo_unlabeled_kept_share"][1])
