"""Tests of the unlabeled folder's checks by file name (training/unlabeled_data.py); the preprocessing cache is
tested end to end in test_unlabeled_e2e.py, with nnU-Net's plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnunetv2_mapo.training.unlabeled_data import UnlabeledDataError, cache_folder, list_unlabeled_cases

DATASET = {"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz"}


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_cases_are_listed_with_their_channels_in_order(tmp_path: Path) -> None:
    folder = _touch(tmp_path / "u", "b_0001.nii.gz", "b_0000.nii.gz", "a_x_0000.nii.gz", "a_x_0001.nii.gz")
    cases = list_unlabeled_cases(str(folder), DATASET, ["c", "d"])
    assert list(cases) == ["a_x", "b"]
    assert [Path(f).name for f in cases["b"]] == ["b_0000.nii.gz", "b_0001.nii.gz"]


def test_hidden_files_are_ignored(tmp_path: Path) -> None:
    folder = _touch(tmp_path / "u", ".DS_Store", "a_0000.nii.gz", "a_0001.nii.gz")
    assert list(list_unlabeled_cases(str(folder), DATASET)) == ["a"]


@pytest.mark.parametrize(("names", "expected"), [
    ((), "is empty"),
    (("a_0000.png", "a_0001.png"), r"no file ending in '\.nii\.gz'.*\.png"),
    (("a.nii.gz",), "is not named CASE_XXXX"),
    (("a_0000.nii.gz",), r"has channels \[0\], but the dataset has 2"),
    (("a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"), r"has channels \[0, 1, 2\]"),
])
def test_a_folder_that_cannot_be_used_is_refused_by_name(tmp_path: Path, names: tuple, expected: str) -> None:
    folder = _touch(tmp_path / "u", *names)
    with pytest.raises(UnlabeledDataError, match=expected):
        list_unlabeled_cases(str(folder), DATASET)


def test_no_folder_or_a_missing_one_is_refused_with_the_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(UnlabeledDataError, match="mapo_unlabeled_folder.*nnUNet_mapo_config"):
        list_unlabeled_cases(None, DATASET)
    with pytest.raises(UnlabeledDataError, match="does not exist"):
        list_unlabeled_cases(str(tmp_path / "missing"), DATASET)


def test_a_case_that_is_also_a_labeled_case_is_a_leak(tmp_path: Path) -> None:
    folder = _touch(tmp_path / "u", "case_1_0000.nii.gz", "case_1_0001.nii.gz", "new_0000.nii.gz", "new_0001.nii.gz")
    with pytest.raises(UnlabeledDataError, match=r"also labeled cases .*\['case_1'\]"):
        list_unlabeled_cases(str(folder), DATASET, ["case_1", "case_2"])


def test_the_cache_sits_beside_the_preprocessed_data_one_per_folder(tmp_path: Path) -> None:
    first = cache_folder("/pre/Dataset001_X/nnUNetPlans_2d", str(tmp_path / "scans"))
    second = cache_folder("/pre/Dataset001_X/nnUNetPlans_2d/", str(tmp_path / "other" / "scans"))
    assert first.startswith("/pre/Dataset001_X/nnUNetPlans_2d_unlabeled/scans_")
    assert Path(first).parent == Path(second).parent and first != second
    assert cache_folder("/pre/Dataset001_X/nnUNetPlans_2d", str(tmp_path / "scans") + "/") == first
