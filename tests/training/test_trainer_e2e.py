"""End-to-end tests of nnUNetTrainerMAPO through nnU-Net's real command line (plan, train, resume, predict)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from e2e_helpers import wait_for_log

from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.commands.workspace import CommandFailed, Workspace, copy_raw_dataset, nnunet_command

pytestmark = pytest.mark.e2e

SHARED_DATA = Path(os.environ.get("NNUNETV2_MAPO_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
TINY = {"num_epochs": 4, "num_iterations_per_epoch": 6, "num_val_iterations_per_epoch": 2,
        "mapo_warmup_epochs": 1, "mapo_regen_every": 2}
MAPO_KEYS = ("mapo_dpo_loss", "mapo_reward_accuracy", "mapo_reward_margin", "mapo_num_pairs", "mapo_regen_seconds")


@pytest.fixture(scope="module")
def ws2d(tmp_path_factory) -> Workspace:
    workspace = Workspace(str(tmp_path_factory.mktemp("e2e2d")))
    write_synthetic_dataset(workspace.raw, 901, "Toy2D", dim=2, num_cases=16, seed=3)
    workspace.plan_and_preprocess(901, ["2d"])
    return workspace


def _checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _read(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def test_train_and_predict_2d(ws2d: Workspace, tmp_path: Path) -> None:
    output = ws2d.train(901, "2d", 0, "nnUNetTrainerMAPO", "cpu", TINY)
    fold = ws2d.output_folder(901, "nnUNetTrainerMAPO", "2d", 0)
    for name in ("checkpoint_final.pth", "progress.png", "progress_mapo.png", "mapo_config.json",
                 "validation/summary.json", "mapo_rounds/round_0000.png", "mapo_rounds/round_0001.png"):
        assert os.path.isfile(os.path.join(fold, name)), name
    assert not os.path.exists(os.path.join(fold, "checkpoint_latest.pth"))
    assert not list(Path(fold).glob("checkpoint_latest.pth.mapo_e*.pt"))  # removed with checkpoint_latest.pth
    assert "MAPO round 0 (epoch 1)" in output and "MAPO round 1 (epoch 3)" in output

    record = json.load(open(os.path.join(fold, "mapo_config.json")))
    assert record["overrides_from_env"] == TINY
    assert record["settings"]["num_epochs"] == 4 and record["settings"]["mapo_num_hypotheses"] == 8

    logging = _checkpoint(os.path.join(fold, "checkpoint_final.pth"))["logging"]
    for key in MAPO_KEYS:
        assert len(logging[key]) == 4, key
        assert math.isnan(logging[key][0]), f"{key} must be NaN during warm-up"
    assert all(n > 0 for n in logging["mapo_num_pairs"][1:])
    assert all(math.isfinite(v) for v in logging["mapo_dpo_loss"][1:])
    assert math.isfinite(logging["mapo_regen_seconds"][1]) and math.isnan(logging["mapo_regen_seconds"][2])
    for key in ("mapo_dice_chosen", "mapo_dice_rejected", "mapo_dice_no_dropout"):  # logged at round epochs only
        assert [math.isfinite(v) for v in logging[key]] == [False, True, False, True], key
        assert all(0.0 <= v <= 1.0 for v in logging[key] if math.isfinite(v)), key
    assert all(c > r for c, r in zip(logging["mapo_dice_chosen"][1::2], logging["mapo_dice_rejected"][1::2]))
    assert "without dropout" in output

    # --val re-runs nnU-Net's validation from checkpoint_final (MAPO state present), --npz adds probabilities
    ws2d.train(901, "2d", 0, "nnUNetTrainerMAPO", "cpu", TINY, extra_args=["--val", "--npz"])
    assert list(Path(fold, "validation").glob("*.npz"))

    # nnUNetv2_predict finds the trainer from the checkpoint and predicts deterministically (dropout off).
    cases = ws2d.validation_cases(901, 0)[:2]
    images = ws2d.stage_images(901, cases, str(tmp_path / "in"))
    for run in ("a", "b"):
        ws2d.predict(901, "2d", 0, "nnUNetTrainerMAPO", "cpu", images, str(tmp_path / run))
    for case in cases:
        first, second = _read(str(tmp_path / "a" / f"{case}.nii.gz")), _read(str(tmp_path / "b" / f"{case}.nii.gz"))
        assert first.shape == _read(os.path.join(ws2d.raw, "Dataset901_Toy2D", "labelsTr", f"{case}.nii.gz")).shape
        np.testing.assert_array_equal(first, second)


def test_disable_checkpointing_and_find_best_configuration_with_ensembling(ws2d: Workspace) -> None:
    """Runs after test_train_and_predict_2d (same module), whose MAPO fold 0 has validation probabilities."""
    mapo_fold = ws2d.output_folder(901, "nnUNetTrainerMAPO", "2d", 0)
    if not list(Path(mapo_fold, "validation").glob("*.npz")):
        pytest.fail("needs test_train_and_predict_2d to have run first (module order)")
    ws2d.train(901, "2d", 0, "nnUNetTrainerMAPO_ChannelDropout", "cpu", TINY,
               extra_args=["--disable_checkpointing", "--npz"])
    fold = Path(ws2d.output_folder(901, "nnUNetTrainerMAPO_ChannelDropout", "2d", 0))
    assert not list(fold.glob("checkpoint*")) and (fold / "validation" / "summary.json").is_file()

    ws2d.run(["nnUNetv2_find_best_configuration", "901", "-c", "2d", "-tr", "nnUNetTrainerMAPO",
              "nnUNetTrainerMAPO_ChannelDropout", "-f", "0", "-np", "1"])
    results = Path(ws2d.results, "Dataset901_Toy2D")
    information = json.load(open(results / "inference_information.json"))
    assert "nnUNetTrainerMAPO" in json.dumps(information["best_model_or_ensemble"])
    assert list(results.glob("ensembles/ensemble___*nnUNetTrainerMAPO_ChannelDropout*/summary.json"))


def test_bad_setting_stops_before_training(ws2d: Workspace) -> None:
    with pytest.raises(CommandFailed) as failure:
        ws2d.train(901, "2d", 1, "nnUNetTrainerMAPO", "cpu", {**TINY, "mapo_beta": -1})
    message = str(failure.value)
    assert "mapo_beta" in message and "-1" in message and "> 0" in message
    assert "unpacking" not in message.lower() and "Epoch 0" not in message
    assert not os.path.exists(os.path.join(ws2d.output_folder(901, "nnUNetTrainerMAPO", "2d", 1),
                                           "checkpoint_final.pth"))


def _plain_checkpoint(workspace: Workspace, dataset_id: int, configuration: str, target: str) -> str:
    """A checkpoint of nnU-Net's own nnUNetTrainer network (what -pretrained_weights reads: 'network_weights')."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = os.path.join(workspace.preprocessed, workspace.dataset_name(dataset_id))
    plans = PlansManager(os.path.join(folder, "nnUNetPlans.json"))
    dataset_json = load_json(os.path.join(folder, "dataset.json"))
    configuration_manager = plans.get_configuration(configuration)
    network = nnUNetTrainer.build_network_architecture(
        plans, configuration_manager, determine_num_input_channels(plans, configuration_manager, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads, True)
    torch.save({"network_weights": network.state_dict()}, target)
    return target


def test_pretrained_weights_from_plain_trainer(ws2d: Workspace, tmp_path: Path) -> None:
    plain = _plain_checkpoint(ws2d, 901, "2d", str(tmp_path / "plain.pth"))
    output = ws2d.train(901, "2d", 2, "nnUNetTrainerMAPO_NoWarmup", "cpu",
                        {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 1},
                        extra_args=["-pretrained_weights", plain])
    assert "Loading pretrained weights" in output
    assert "MAPO round 0 (epoch 0)" in output
    mapo = _checkpoint(os.path.join(ws2d.output_folder(901, "nnUNetTrainerMAPO_NoWarmup", "2d", 2),
                                    "checkpoint_final.pth"))
    assert set(mapo["network_weights"]) == set(_checkpoint(plain)["network_weights"])


def test_sigkill_mid_training_then_resume(ws2d: Workspace) -> None:
    settings = {"num_epochs": 6, "num_iterations_per_epoch": 6, "num_val_iterations_per_epoch": 1,
                "mapo_warmup_epochs": 1, "mapo_regen_every": 2, "save_every": 1}
    fold_dir = ws2d.output_folder(901, "nnUNetTrainerMAPO", "2d", 3)
    env = ws2d.environment({"nnUNet_mapo_config": json.dumps(settings), "nnUNet_n_proc_DA": "0"})
    command = [nnunet_command("nnUNetv2_train"), "901", "2d", "3", "-tr", "nnUNetTrainerMAPO", "-device", "cpu"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.makedirs(fold_dir, exist_ok=True)
        wait_for_log(fold_dir, "MAPO round 1 (epoch 3)", process, timeout=600)  # killed in a round, mid-epoch 3
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    latest = _checkpoint(os.path.join(fold_dir, "checkpoint_latest.pth"))
    assert latest["current_epoch"] == 3
    assert os.path.isfile(os.path.join(fold_dir, "checkpoint_latest.pth.mapo_e000003.pt"))

    output = ws2d.train(901, "2d", 3, "nnUNetTrainerMAPO", "cpu", settings, extra_args=["--c"])
    assert "MAPO round 1 (epoch 3)" in output and "MAPO round 0" not in output
    final = _checkpoint(os.path.join(fold_dir, "checkpoint_final.pth"))
    lengths = {key: len(values) for key, values in final["logging"].items()}
    assert set(lengths.values()) == {6}, lengths
    assert math.isnan(final["logging"]["mapo_num_pairs"][0]) and final["logging"]["mapo_num_pairs"][5] > 0
    assert not list(Path(fold_dir).glob("*.tmp"))


@pytest.fixture(scope="module")
def ws3d(tmp_path_factory) -> Workspace:
    workspace = Workspace(str(tmp_path_factory.mktemp("e2e3d")))
    write_synthetic_dataset(workspace.raw, 902, "Toy3D", dim=3, num_cases=10, shape=(24, 28, 24), seed=4)
    workspace.plan_and_preprocess(902, ["3d_fullres"])
    return workspace


def test_train_and_predict_3d(ws3d: Workspace, tmp_path: Path) -> None:
    settings = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1,
                "mapo_warmup_epochs": 1, "mapo_num_hypotheses": 4}
    output = ws3d.train(902, "3d_fullres", 0, "nnUNetTrainerMAPO", "cpu", settings)
    assert "MAPO round 0 (epoch 1)" in output
    cases = ws3d.validation_cases(902, 0)[:1]
    images = ws3d.stage_images(902, cases, str(tmp_path / "in"))
    ws3d.predict(902, "3d_fullres", 0, "nnUNetTrainerMAPO", "cpu", images, str(tmp_path / "out"))
    assert (tmp_path / "out" / f"{cases[0]}.nii.gz").is_file()


@pytest.mark.skipif(not (SHARED_DATA / "Dataset004_Hippocampus").is_dir(),
                    reason="needs ../shared/data/Dataset004_Hippocampus (the real-data test)")
def test_hippocampus_few_cases(tmp_path: Path) -> None:
    workspace = Workspace(str(tmp_path))
    source = SHARED_DATA / "Dataset004_Hippocampus"
    cases = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").glob("*.nii.gz"))[:8]
    copy_raw_dataset(str(source), workspace.raw, cases)
    assert not list((SHARED_DATA / "Dataset004_Hippocampus").glob("*.pkl"))  # nothing written into shared/
    workspace.plan_and_preprocess(4, ["3d_fullres"])
    settings = {"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1,
                "mapo_warmup_epochs": 1, "mapo_num_hypotheses": 4}
    output = workspace.train(4, "3d_fullres", 0, "nnUNetTrainerMAPO", "cpu", settings)
    assert "MAPO round 0 (epoch 1)" in output
    summary = json.load(open(os.path.join(workspace.output_folder(4, "nnUNetTrainerMAPO", "3d_fullres", 0),
                                          "validation", "summary.json")))
    assert set(summary["mean"]) == {"1", "2"}


@pytest.mark.parametrize(("trainer", "setting", "value"), [("nnUNetTrainerMAPO_SimPO", "mapo_loss_type", "simpo"),
                                                            ("nnUNetTrainerMAPO_DPOP", "mapo_loss_type", "dpop"),
                                                            ("nnUNetTrainerMAPO_cDPO", "mapo_loss_type", "cdpo"),
                                                            ("nnUNetTrainerMAPO_DPO", "mapo_loss_type", "sigmoid"),
                                                            ("nnUNetTrainerMAPO_TargetMargin", "mapo_loss_type",
                                                             "target_margin"),
                                                            ("nnUNetTrainerMAPO_RPO", "mapo_loss_type", "rpo"),
                                                            ("nnUNetTrainerMAPO_IPO", "mapo_beta", 0.6),
                                                            ("nnUNetTrainerMAPO_BoundaryRanked", "mapo_objectives",
                                                             "boundary"),
                                                            ("nnUNetTrainerMAPO_FixedReference",
                                                             "mapo_reference_policy", "first_round"),
                                                            ("nnUNetTrainerMAPO_GTAnchored", "mapo_pairing",
                                                             "ground_truth"),
                                                            ("nnUNetTrainerMAPO_GTOverPrediction", "mapo_pairing",
                                                             "ground_truth_over_prediction"),
                                                            ("nnUNetTrainerMAPO_MultiObjective", "mapo_objectives",
                                                             "dice+boundary"),
                                                            ("nnUNetTrainerMAPO_MirroredPairs", "mapo_mirror_pairs",
                                                             True)])
def test_loss_and_pair_variants_train_end_to_end(ws2d: Workspace, trainer: str, setting: str,
                                                 value: str | bool) -> None:
    # margin 0: any item whose best and worst hypotheses differ in a voxel gives a pair, so the first round has pairs
    output = ws2d.train(901, "2d", 4, trainer, "cpu",
                        TINY | {"num_epochs": 2, "mapo_regen_every": 1, "mapo_pair_margin": 0.0})
    fold = ws2d.output_folder(901, trainer, "2d", 4)
    assert json.load(open(os.path.join(fold, "mapo_config.json")))["settings"][setting] == value
    assert "MAPO round 0 (epoch 1)" in output
    logging = _checkpoint(os.path.join(fold, "checkpoint_final.pth"))["logging"]
    assert logging["mapo_num_pairs"][1] > 0
    with_pairs = [v for v, n in zip(logging["mapo_dpo_loss"][1:], logging["mapo_num_pairs"][1:]) if n > 0]
    assert all(math.isfinite(v) for v in with_pairs)  # the term is active after the warm-up, wherever a round had pairs
    no_dropout = logging["mapo_dice_no_dropout"][1]  # the round's Dice of the network's own prediction
    if str(value).startswith("ground_truth"):
        assert logging["mapo_dice_chosen"][1] == 1.0  # y+ is the ground truth
    if value == "ground_truth_over_prediction":  # y- is the network's own prediction
        assert logging["mapo_dice_rejected"][1] == pytest.approx(no_dropout)
        assert "the prediction without dropout for each of" in output
    assert math.isnan(no_dropout) if value == "simpo" else math.isfinite(no_dropout)  # SimPO: no reference pass
    if setting == "mapo_reference_policy":  # written once at the first round, named by the final state
        assert os.path.isfile(os.path.join(fold, "mapo_reference_network.pt"))
    if setting == "mapo_mirror_pairs":  # each pair's reference in all 4 views of a 2d patch, kept with the set
        sets = [torch.load(path, weights_only=True) for path in Path(fold, "mapo_sets").glob("*.pt")]
        assert all(s["views"] == [[], [0], [1], [0, 1]] and s["reference_chosen_logps"].shape == (len(s["keys"]), 4)
                   for s in sets if s["keys"])
        assert any(s["keys"] for s in sets) or not with_pairs


def test_dropout_only_ablation_trains_end_to_end_without_rounds(ws2d: Workspace) -> None:
    trainer = "nnUNetTrainerDropoutOnly"
    output = ws2d.train(901, "2d", 4, trainer, "cpu", TINY | {"num_epochs": 2})
    fold = ws2d.output_folder(901, trainer, "2d", 4)
    assert "MAPO round" not in output and os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    logging = _checkpoint(os.path.join(fold, "checkpoint_final.pth"))["logging"]
    assert all(math.isnan(v) for v in logging["mapo_num_pairs"] + logging["mapo_dpo_loss"])
    assert all(math.isfinite(v) for v in logging["train_losses"])
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))  # predicted like any nnU-Net model


def test_online_pairs_train_end_to_end_without_rounds(ws2d: Workspace) -> None:
    trainer = "nnUNetTrainerMAPO_OnlinePairs"
    output = ws2d.train(901, "2d", 4, trainer, "cpu", TINY | {"num_epochs": 2, "mapo_pair_margin": 0.0})
    fold = ws2d.output_folder(901, trainer, "2d", 4)
    assert "MAPO round" not in output and "pairs drawn from each step's own batch" in output
    logging = _checkpoint(os.path.join(fold, "checkpoint_final.pth"))["logging"]
    assert logging["mapo_num_pairs"][1] > 0 and math.isfinite(logging["mapo_dpo_loss"][1])  # the term ran
    assert math.isnan(logging["mapo_regen_seconds"][1])  # no round
