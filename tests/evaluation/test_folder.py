"""Tests of ``nnunetv2_mapo.evaluation.folder`` and ``nnunetv2_mapo evaluate``: folders, regions, ignore, bad input."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mask_helpers import assert_same, ball, write_seg
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunetv2_mapo.commands.evaluate import add_arguments as add_evaluate_arguments
from nnunetv2_mapo.commands.evaluate import run as run_evaluate
from nnunetv2_mapo.evaluation.folder import EvaluationInputError, compute_metrics_on_folder_with_surface

NNUNET_KEYS = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")


# --------------------------------------------------------------------------------------------------------------------
# Folder evaluation (label-based dataset, through the CLI entry points)
# --------------------------------------------------------------------------------------------------------------------

SHAPE_ZYX = (10, 24, 40)
SPACING_XYZ = (0.5, 1.0, 3.0)  # SimpleITK order: array axis 0 (z) has 3.0 mm, array axis 2 (x) 0.5 mm


def _sphere() -> np.ndarray:
    return ball(SHAPE_ZYX, (5, 12, 28), 4)


def _plate(z: int) -> np.ndarray:
    mask = np.zeros(SHAPE_ZYX, dtype=bool)
    mask[z, 4:20, 2:14] = True
    return mask


def _labels(sphere: np.ndarray | None, plate_mask: np.ndarray | None) -> np.ndarray:
    seg = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    if sphere is not None:
        seg[sphere] = 1
    if plate_mask is not None:
        seg[plate_mask] = 2
    return seg


def _write_dataset(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict, **extra) -> Path:
    (root / "gt").mkdir(parents=True)
    (root / "pred").mkdir()
    for name, (ref, pred) in cases.items():
        write_seg(root / "gt" / f"{name}.nii.gz", ref, SPACING_XYZ)
        write_seg(root / "pred" / f"{name}.nii.gz", pred, SPACING_XYZ)
    dataset = {"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": len(cases)}
    dataset.update(extra)
    (root / "dataset.json").write_text(json.dumps(dataset))
    (root / "plans.json").write_text(json.dumps({"label_manager": "LabelManager"}))
    return root


def _cli_args(root: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(
        [
            str(root / "gt"),
            str(root / "pred"),
            "-djfile",
            str(root / "dataset.json"),
            "-pfile",
            str(root / "plans.json"),
        ]
        + list(extra)
    )


@pytest.fixture(scope="module")
def label_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sphere, shifted_sphere = _sphere(), np.roll(_sphere(), 1, axis=2)  # shifted by one 0.5 mm voxel along x
    cases = {
        # plate shifted by one 3 mm voxel along z -> HD95 = ASD = 3.0 mm exactly
        "case_a": (_labels(sphere, _plate(3)), _labels(shifted_sphere, _plate(4))),
        "case_b": (_labels(sphere, _plate(3)), _labels(sphere, None)),  # plate missed
        "case_c": (_labels(sphere, None), _labels(sphere, _plate(3))),  # plate predicted but absent
        "case_d": (_labels(sphere, None), _labels(sphere, None)),  # plate absent in both
    }
    labels = {"background": 0, "sphere": 1, "plate": 2, "absent": 3}  # label 3 occurs in no case
    return _write_dataset(tmp_path_factory.mktemp("labels"), cases, labels)


@pytest.fixture(scope="module")
def label_summary(label_dataset: Path) -> dict:
    assert run_evaluate(_cli_args(label_dataset, "-np", "1")) == 0
    return json.loads((label_dataset / "pred" / "summary.json").read_text())


def test_cli_summary_uses_reader_spacing_in_array_order(label_summary: dict) -> None:
    per_case = {Path(c["prediction_file"]).name: c["metrics"] for c in label_summary["metric_per_case"]}
    # plate: one voxel along array axis 0, whose spacing is SimpleITK's z spacing (3.0). Reversing the spacing a second
    # time would give 0.5 mm here.
    assert per_case["case_a.nii.gz"]["2"]["HD95"] == pytest.approx(3.0)
    assert per_case["case_a.nii.gz"]["2"]["ASD"] == pytest.approx(3.0)
    # sphere shifted by one voxel along array axis 2 (0.5 mm): all distances <= 0.5 mm (3.0 with reversed spacing)
    assert 0 < per_case["case_a.nii.gz"]["1"]["HD95"] <= 0.5 + 1e-6
    assert per_case["case_b.nii.gz"]["1"]["HD95"] == 0.0 and per_case["case_b.nii.gz"]["1"]["ASD"] == 0.0
    # NSD at the default 2 mm: the plate's 3 mm shift is outside it, the sphere's <= 0.5 mm inside it
    assert per_case["case_a.nii.gz"]["2"]["NSD"] == 0.0 and per_case["case_a.nii.gz"]["1"]["NSD"] == 1.0


def test_cli_nsd_tolerance_is_passed_on_and_checked(label_dataset: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "wide.json"
    assert run_evaluate(_cli_args(label_dataset, "-np", "1", "-o", str(output), "--nsd-tolerance", "3")) == 0
    wide = json.loads(output.read_text())
    per_case = {Path(c["prediction_file"]).name: c["metrics"] for c in wide["metric_per_case"]}
    assert per_case["case_a.nii.gz"]["2"]["NSD"] == 1.0  # 3 mm tolerance, 3 mm shift: inclusive
    assert run_evaluate(_cli_args(label_dataset, "-np", "1", "-o", str(output), "--nsd-tolerance", "-1")) == 2
    assert "NSD tolerance" in capsys.readouterr().err


def test_cli_summary_empty_cases_and_means(label_summary: dict) -> None:
    per_case = {Path(c["prediction_file"]).name: c["metrics"] for c in label_summary["metric_per_case"]}
    for name in ("case_b.nii.gz", "case_c.nii.gz", "case_d.nii.gz"):
        assert math.isnan(per_case[name]["2"]["HD95"]) and math.isnan(per_case[name]["2"]["ASD"])
    plate_mean = label_summary["mean"]["2"]
    # only case_a enters the plate's distance means; the empty cases are counted, not averaged as 0 or inf
    assert plate_mean["HD95"] == pytest.approx(3.0) and plate_mean["ASD"] == pytest.approx(3.0)
    assert plate_mean["NSD"] == 0.0 and math.isnan(per_case["case_b.nii.gz"]["2"]["NSD"])
    assert (plate_mean["n_surface_evaluated"], plate_mean["n_both_empty"]) == (1, 1)
    assert (plate_mean["n_ref_empty_pred_nonempty"], plate_mean["n_pred_empty_ref_nonempty"]) == (1, 1)
    sphere_mean = label_summary["mean"]["1"]
    assert sphere_mean["n_surface_evaluated"] == 4 and sphere_mean["n_both_empty"] == 0
    fg = label_summary["foreground_mean"]
    absent_mean = label_summary["mean"]["3"]  # no case has it: NaN distance means, all cases counted as both empty
    assert math.isnan(absent_mean["HD95"]) and math.isnan(absent_mean["ASD"]) and absent_mean["n_both_empty"] == 4
    # the foreground distance means skip the class without any value; the counts are totals over classes
    assert fg["HD95"] == pytest.approx((sphere_mean["HD95"] + plate_mean["HD95"]) / 2)
    assert fg["ASD"] == pytest.approx((sphere_mean["ASD"] + plate_mean["ASD"]) / 2)
    assert fg["n_surface_evaluated"] == 5 and fg["n_both_empty"] == 5 and fg["n_ref_empty_pred_nonempty"] == 1
    for values in [*label_summary["mean"].values(), fg]:
        assert all(not math.isinf(v) for v in values.values())


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")  # from nnU-Net itself (class 3)
def test_cli_summary_matches_nnunet_and_loads_with_nnunet(label_dataset: Path, label_summary: dict) -> None:
    reference = compute_metrics_on_folder(
        str(label_dataset / "gt"), str(label_dataset / "pred"), None, SimpleITKIO(), ".nii.gz", [1, 2, 3], None, 1
    )
    ours = load_summary_json(str(label_dataset / "pred" / "summary.json"))  # nnU-Net's own loader
    assert set(ours) == {"metric_per_case", "mean", "foreground_mean"}
    assert len(ours["metric_per_case"]) == len(reference["metric_per_case"]) == 4
    for mine, theirs in zip(ours["metric_per_case"], reference["metric_per_case"]):
        assert mine["prediction_file"] == theirs["prediction_file"]
        assert mine["reference_file"] == theirs["reference_file"]
        for label in (1, 2, 3):
            assert set(mine["metrics"][label]) == {*NNUNET_KEYS, "HD95", "ASD", "NSD"}
            for key in NNUNET_KEYS:
                assert_same(mine["metrics"][label][key], theirs["metrics"][label][key])
    for label in (1, 2, 3):
        for key in NNUNET_KEYS:
            assert_same(ours["mean"][label][key], float(reference["mean"][label][key]))
    for key in NNUNET_KEYS:
        assert_same(ours["foreground_mean"][key], float(reference["foreground_mean"][key]))
    assert ours["mean"][2]["Dice"] == pytest.approx(0.0)  # case_a plate Dice 0, b and c 0, d NaN -> nanmean 0
    assert math.isnan(ours["foreground_mean"]["Dice"])  # nnU-Net's plain mean over classes; class 3 is all NaN


def test_multiprocessing_gives_the_same_summary(label_dataset: Path, label_summary: dict, tmp_path: Path) -> None:
    output = tmp_path / "sub" / "summary.json"
    compute_metrics_on_folder_with_surface(
        str(label_dataset / "gt"),
        str(label_dataset / "pred"),
        str(output),
        SimpleITKIO(),
        ".nii.gz",
        [1, 2, 3],
        None,
        2,
    )
    assert _nan_equal(json.loads(output.read_text()), label_summary)


def _nan_equal(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_nan_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_cli_defaults_match_nnunet_evaluate_folder(label_dataset: Path) -> None:
    args = _cli_args(label_dataset)
    assert (args.o, args.np, args.chill) == (None, default_num_processes, False)


# --------------------------------------------------------------------------------------------------------------------
# Regions and ignore label
# --------------------------------------------------------------------------------------------------------------------


def test_region_based_dataset(tmp_path: Path) -> None:
    # whole = labels 1 and 2, core = label 2. The prediction moves the core inside an unchanged whole, so the region
    # (1, 2) is identical (HD95 = ASD = 0) while the core region is not. Treating (1, 2) as label 1 alone would not
    # give 0.
    whole = ball(SHAPE_ZYX, (5, 12, 20), 4.5)
    core = ball(SHAPE_ZYX, (5, 12, 19), 2)
    reference = np.where(whole, 1, 0).astype(np.uint8)
    reference[core] = 2
    prediction = np.where(whole, 1, 0).astype(np.uint8)
    prediction[np.roll(core, 2, axis=2)] = 2  # 2 voxels of 0.5 mm along x
    labels = {"background": 0, "whole": [1, 2], "core": 2}
    root = _write_dataset(tmp_path, {"case": (reference, prediction)}, labels, regions_class_order=[1, 2])
    assert run_evaluate(_cli_args(root, "-np", "1", "-o", str(tmp_path / "out" / "regions.json"))) == 0
    summary = json.loads((tmp_path / "out" / "regions.json").read_text())
    assert set(summary["mean"]) == {"(1, 2)", "2"}
    metrics = summary["metric_per_case"][0]["metrics"]
    assert metrics["(1, 2)"]["HD95"] == 0.0 and metrics["(1, 2)"]["ASD"] == 0.0 and metrics["(1, 2)"]["Dice"] == 1.0
    assert 0 < metrics["2"]["HD95"] <= 2 * 0.5 + 1e-6
    assert metrics["2"]["Dice"] < 1.0


def test_ignore_label_voxels_are_left_out(tmp_path: Path) -> None:
    sphere = _sphere()
    reference = _labels(sphere, None)
    reference[:, :, :10] = 2  # unannotated stripe (ignore label)
    prediction = _labels(sphere, None)
    prediction[4:6, 8:12, 2:6] = 1  # spurious blob, entirely inside the ignored stripe
    root = _write_dataset(tmp_path, {"case": (reference, prediction)}, {"background": 0, "fg": 1, "ignore": 2})
    assert run_evaluate(_cli_args(root, "-np", "1")) == 0
    metrics = json.loads((root / "pred" / "summary.json").read_text())["metric_per_case"][0]["metrics"]
    assert set(metrics) == {"1"}
    assert metrics["1"]["HD95"] == 0.0 and metrics["1"]["ASD"] == 0.0 and metrics["1"]["FP"] == 0


# --------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any image is read
# --------------------------------------------------------------------------------------------------------------------


class _MustNotRead(SimpleITKIO):
    def read_seg(self, seg_fname: str) -> tuple[np.ndarray, dict]:
        raise AssertionError(f"read {seg_fname} although the input is invalid")


@pytest.fixture()
def tiny_folders(tmp_path: Path) -> Path:
    seg = _labels(_sphere(), None)
    for folder, names in (("gt", ("a", "b")), ("pred", ("a", "b"))):
        (tmp_path / folder).mkdir()
        for name in names:
            write_seg(tmp_path / folder / f"{name}.nii.gz", seg, SPACING_XYZ)
    return tmp_path


def _evaluate(root: Path, **kwargs) -> dict:
    arguments = {
        "folder_ref": str(root / "gt"),
        "folder_pred": str(root / "pred"),
        "output_file": str(root / "summary.json"),
        "image_reader_writer": _MustNotRead(),
        "file_ending": ".nii.gz",
        "regions_or_labels": [1],
        "num_processes": 1,
    }
    arguments.update(kwargs)
    return compute_metrics_on_folder_with_surface(**arguments)


def test_missing_folders(tiny_folders: Path) -> None:
    with pytest.raises(EvaluationInputError, match="reference folder does not exist"):
        _evaluate(tiny_folders, folder_ref=str(tiny_folders / "nope"))
    with pytest.raises(EvaluationInputError, match="prediction folder does not exist"):
        _evaluate(tiny_folders, folder_pred=str(tiny_folders / "nope"))


def test_unmatched_and_missing_predictions(tiny_folders: Path) -> None:
    (tiny_folders / "pred" / "b.nii.gz").rename(tiny_folders / "pred" / "b_pred.nii.gz")
    with pytest.raises(EvaluationInputError, match=r"have no reference file of the same name.*b_pred\.nii\.gz"):
        _evaluate(tiny_folders)
    (tiny_folders / "pred" / "b_pred.nii.gz").unlink()
    with pytest.raises(EvaluationInputError, match=r"no prediction.*b\.nii\.gz.*--chill"):
        _evaluate(tiny_folders, chill=False)


def test_wrong_file_ending_and_bad_arguments(tiny_folders: Path) -> None:
    with pytest.raises(EvaluationInputError, match=r"No reference files ending with '\.nrrd'"):
        _evaluate(tiny_folders, file_ending=".nrrd")
    with pytest.raises(EvaluationInputError, match=r"must end with \.json"):
        _evaluate(tiny_folders, output_file=str(tiny_folders / "summary.txt"))
    with pytest.raises(EvaluationInputError, match="number of processes"):
        _evaluate(tiny_folders, num_processes=0)


def test_cli_reports_bad_input_with_exit_code_2(tiny_folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(
        gt_folder=str(tiny_folders / "gt"),
        pred_folder=str(tiny_folders / "pred"),
        djfile=str(tiny_folders / "dataset.json"),
        pfile=str(tiny_folders / "plans.json"),
        o=None,
        np=1,
        chill=False,
        nsd_tolerance=2.0,
    )
    assert run_evaluate(args) == 2
    assert "dataset.json file does not exist" in capsys.readouterr().err
    (tiny_folders / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "fg": 1}, "file_ending": ".nii.gz"})
    )
    assert run_evaluate(args) == 2
    assert "plans file does not exist" in capsys.readouterr().err
    (tiny_folders / "plans.json").write_text(json.dumps({"label_manager": "LabelManager"}))
    args.o = str(tiny_folders / "summary.txt")
    assert run_evaluate(args) == 2
    captured = capsys.readouterr()
    assert "must end with .json" in captured.err
    assert "reader/writer" not in captured.out  # rejected before nnU-Net picked (and test-read) a reader
    args.o = None
    (tiny_folders / "pred" / "b.nii.gz").rename(tiny_folders / "pred" / "B.nii.gz")
    assert run_evaluate(args) == 2
    assert "no reference file of the same name" in capsys.readouterr().err
    assert not (tiny_folders / "pred" / "summary.json").exists()


def test_shape_mismatch_is_reported(tiny_folders: Path) -> None:
    write_seg(tiny_folders / "pred" / "b.nii.gz", np.zeros((10, 24, 39), dtype=np.uint8), SPACING_XYZ)
    with pytest.raises(ValueError, match=r"Shape mismatch.*b\.nii\.gz"):
        _evaluate(tiny_folders, image_reader_writer=SimpleITKIO())
