"""``nnunetv2_mapo predict``: nnU-Net's segmentations unchanged, uncertainty maps on the input's grid.

Two small models are trained through ``nnUNetv2_train``: a plain ``nnUNetTrainer`` network (the benchmark's
``nnUNetTrainer`` + budget, no dropout of its own) on a 2D RGB PNG dataset, and ``nnUNetTrainerMAPO`` on a 3D dataset
with anisotropic spacing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from scipy.stats import mannwhitneyu

from nnunetv2_mapo.benchmark.lookup import with_benchmark_trainers
from nnunetv2_mapo.commands.cli import main
from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.commands.workspace import Workspace, nnunet_command

pytestmark = pytest.mark.e2e
PLAIN = "nnUNetTrainerBenchmarkBaseline"  # nnUNetTrainer with a budget from nnUNet_mapo_config, nothing else
CASES = ("case_000", "case_001", "case_002")


def write_png_dataset(raw: str, dataset_id: int, count: int, shape: tuple[int, int]) -> Path:
    folder = Path(raw) / f"Dataset{dataset_id}_PNGToy"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    for index in range(count):
        centre = rng.uniform(0.35, 0.65, 2) * shape
        radii = rng.uniform(0.15, 0.3, 2) * shape
        inside = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
        image = np.clip(60 + 120 * inside[..., None] * [1.0, 0.6, 0.3] + rng.normal(0, 40, (*shape, 3)), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(folder / "imagesTr" / f"case_{index:03d}_0000.png")
        Image.fromarray(inside.astype(np.uint8)).save(folder / "labelsTr" / f"case_{index:03d}.png")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": count, "file_ending": ".png"}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    workspace = Workspace(str(tmp_path_factory.mktemp("predict")))
    write_png_dataset(workspace.raw, 991, 12, (48, 56))
    write_synthetic_dataset(workspace.raw, 992, "AnisoToy", dim=3, num_cases=8, shape=(12, 32, 28),
                            spacing=(3.0, 1.0, 0.8), seed=3)
    with pytest.MonkeyPatch.context() as patch:  # the baseline trainer is found in these processes only
        patch.setenv("nnUNet_extTrainer", with_benchmark_trainers(os.environ)["nnUNet_extTrainer"])
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            patch.setenv(key, workspace.environment()[key])
        patch.setenv("nnUNet_def_n_proc", "1")
        workspace.plan_and_preprocess(991, ["2d"])
        workspace.plan_and_preprocess(992, ["3d_fullres"])
        workspace.train(991, "2d", 0, PLAIN, "cpu", {"num_epochs": 3, "num_iterations_per_epoch": 12,
                                                    "num_val_iterations_per_epoch": 1})
        workspace.train(992, "3d_fullres", 0, "nnUNetTrainerMAPO", "cpu", {
            "num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1,
            "mapo_warmup_epochs": 0, "mapo_cases_per_round": 2})
        images = {2: workspace.stage_images(991, CASES, str(Path(workspace.root) / "in2d")),
                  3: workspace.stage_images(992, CASES, str(Path(workspace.root) / "in3d"))}
        yield {"workspace": workspace, "images": images, "root": Path(workspace.root)}


def arguments(models: dict, dim: int, output: Path, *extra: str) -> list[str]:
    dataset, configuration, trainer = (991, "2d", PLAIN) if dim == 2 else (992, "3d_fullres", "nnUNetTrainerMAPO")
    return ["-i", models["images"][dim], "-o", str(output), "-d", str(dataset), "-c", configuration, "-tr", trainer,
            "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar", *extra]


def predict(models: dict, dim: int, output: Path, *extra: str) -> int:
    return main(["predict", *arguments(models, dim, output, *extra)])


@pytest.fixture(scope="module")
def outputs(models) -> dict:
    """Per model: nnUNetv2_predict's output and ours with 3 dropout passes (3D: through the console command, and also
    without maps)."""
    folders = {}
    for dim in (2, 3):
        root = models["root"] / f"out{dim}d"
        folders[dim] = {name: root / name for name in ("nnunet", "plain", "maps")}
        subprocess.run([nnunet_command("nnUNetv2_predict"), *arguments(models, dim, folders[dim]["nnunet"], "-f", "0")],
                       check=True, capture_output=True, env=dict(os.environ), timeout=600)
        if dim == 3:
            assert predict(models, dim, folders[dim]["plain"], "-f", "0") == 0
        with_maps = arguments(models, dim, folders[dim]["maps"], "-f", "0", "--mc-samples", "3")
        if dim == 2:
            assert main(["predict", *with_maps]) == 0
        else:
            result = subprocess.run([sys.executable, "-m", "nnunetv2_mapo.commands.cli", "predict", *with_maps],
                                    capture_output=True, text=True, env=dict(os.environ), timeout=600)
            assert result.returncode == 0, result.stderr[-2000:]
    return folders


def segmentation_bytes(folder: Path, ending: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"*{ending}"))}


@pytest.mark.parametrize("dim", [2, 3])
def test_segmentations_are_byte_identical_to_nnunets(outputs, dim: int) -> None:
    ending = ".png" if dim == 2 else ".nii.gz"
    expected = segmentation_bytes(outputs[dim]["nnunet"], ending)
    assert len(expected) == len(CASES)
    assert segmentation_bytes(outputs[dim]["maps"], ending) == expected  # the maps leave the segmentations alone
    if dim == 3:
        assert segmentation_bytes(outputs[dim]["plain"], ending) == expected
        assert not (outputs[dim]["plain"] / "uncertainty").exists()


def test_maps_of_a_png_model_are_2d_on_the_image_grid(models, outputs) -> None:
    for case in CASES:
        width, height = Image.open(Path(models["images"][2]) / f"{case}_0000.png").size
        for name in ("entropy", "mutual_information"):
            image = sitk.ReadImage(str(outputs[2]["maps"] / "uncertainty" / f"{case}_{name}.nii.gz"))
            assert image.GetDimension() == 2 and image.GetSize() == (width, height)
            assert image.GetPixelID() == sitk.sitkFloat32
            assert sitk.GetArrayFromImage(image).min() >= 0


def test_maps_of_a_3d_model_keep_the_anisotropic_geometry(models, outputs) -> None:
    for case in CASES:
        source = sitk.ReadImage(str(Path(models["images"][3]) / f"{case}_0000.nii.gz"))
        for name in ("entropy", "mutual_information"):
            image = sitk.ReadImage(str(outputs[3]["maps"] / "uncertainty" / f"{case}_{name}.nii.gz"))
            assert image.GetSize() == source.GetSize()
            assert np.allclose(image.GetSpacing(), source.GetSpacing()) and image.GetSpacing()[2] == 3.0
            assert np.allclose(image.GetOrigin(), source.GetOrigin())
            assert np.allclose(image.GetDirection(), source.GetDirection())


def test_uncertainty_is_higher_where_the_segmentation_is_wrong(models, outputs) -> None:
    raw = Path(models["workspace"].raw) / "Dataset991_PNGToy" / "labelsTr"
    entropies, wrong = [], []
    for case in CASES:
        prediction = np.asarray(Image.open(outputs[2]["maps"] / f"{case}.png"))
        truth = np.asarray(Image.open(raw / f"{case}.png"))
        entropies.append(sitk.GetArrayFromImage(sitk.ReadImage(
            str(outputs[2]["maps"] / "uncertainty" / f"{case}_entropy.nii.gz"))).ravel())
        wrong.append((prediction != truth).ravel())
    entropies, wrong = np.concatenate(entropies), np.concatenate(wrong)
    assert 0 < wrong.sum() < wrong.size  # some errors, some right voxels
    auroc = mannwhitneyu(entropies[wrong], entropies[~wrong]).statistic / (wrong.sum() * (~wrong).sum())
    assert auroc > 0.7, auroc


def test_rate_zero_and_identical_folds_give_zero_and_perturbed_folds_disagree(models, tmp_path: Path, capsys) -> None:
    assert predict(models, 3, tmp_path / "one", "-f", "0", "--fold-disagreement") == 2  # refused before any work
    assert "needs several folds" in capsys.readouterr().err
    fold0 = Path(models["workspace"].output_folder(992, "nnUNetTrainerMAPO", "3d_fullres", 0))
    for fold, noise in ((1, 0.0), (2, 0.05)):  # an identical copy, and one with perturbed weights
        target = fold0.parent / f"fold_{fold}"
        target.mkdir(exist_ok=True)
        checkpoint = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        generator = torch.Generator().manual_seed(fold)
        checkpoint["network_weights"] = {k: v + noise * torch.randn(v.shape, generator=generator) * v.abs().mean()
                                         if v.is_floating_point() else v
                                         for k, v in checkpoint["network_weights"].items()}
        torch.save(checkpoint, target / "checkpoint_final.pth")
    try:
        same, different = tmp_path / "same", tmp_path / "different"
        assert predict(models, 3, same, "-f", "0", "1", "--fold-disagreement", "--mc-samples", "2",
                       "--mc-dropout-rate", "0") == 0
        assert predict(models, 3, different, "-f", "0", "2", "--fold-disagreement") == 0
        read = lambda folder, name: sitk.GetArrayFromImage(sitk.ReadImage(  # noqa: E731
            str(folder / "uncertainty" / f"{CASES[0]}_{name}.nii.gz")))
        assert np.abs(read(same, "mutual_information")).max() < 1e-6  # rate 0: every pass is the same
        assert np.abs(read(same, "fold_disagreement")).max() < 1e-6  # identical folds agree everywhere
        assert read(different, "fold_disagreement").max() > 1e-4
        assert not (different / "uncertainty" / f"{CASES[0]}_entropy.nii.gz").exists()  # no --mc-samples
    finally:
        for fold in (1, 2):
            shutil.rmtree(fold0.parent / f"fold_{fold}", ignore_errors=True)
