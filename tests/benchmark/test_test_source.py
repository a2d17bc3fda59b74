"""Tests of ``nnunetv2_mapo.benchmark.test_source``: the second test set's checks, command and results.

Its prediction with trained networks runs in ``test_runner.py``'s end-to-end test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunetv2_mapo.benchmark.spec import BenchmarkInputError
from nnunetv2_mapo.benchmark.test_source import check_test_source, predict_command, summary_file_name
from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset


@pytest.fixture()
def own(tmp_path: Path) -> str:
    return write_synthetic_dataset(str(tmp_path / "own"), 980, "Own", dim=2, num_cases=2, shape=(8, 8))


def other_dataset(tmp_path: Path, **changes) -> str:
    folder = write_synthetic_dataset(str(tmp_path / "other"), 981, "Other", dim=2, num_cases=2, shape=(8, 8))
    path = Path(folder) / "dataset.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    return folder


def test_the_same_task_is_accepted_and_named_by_its_folder(tmp_path: Path, own: str) -> None:
    assert check_test_source(other_dataset(tmp_path), own) == "Dataset981_Other"


@pytest.mark.parametrize(("changes", "message"), [
    ({"labels": {"background": 0, "lesion": 1, "edge": 2}}, "labels"),
    ({"file_ending": ".png"}, "file ending '.png'"),
    ({"channel_names": {"0": "T1", "1": "T2"}}, "2 input channel"),
])
def test_another_task_is_refused_naming_what_differs(tmp_path: Path, own: str, changes: dict, message: str) -> None:
    with pytest.raises(BenchmarkInputError, match=f"not the same task: it has {message}"):
        check_test_source(other_dataset(tmp_path, **changes), own)


def test_a_folder_without_dataset_or_cases_is_refused(tmp_path: Path, own: str) -> None:
    with pytest.raises(BenchmarkInputError, match="no dataset.json"):
        check_test_source(str(tmp_path / "missing"), own)
    empty = Path(other_dataset(tmp_path))
    for label in (empty / "labelsTr").iterdir():
        label.unlink()
    with pytest.raises(BenchmarkInputError, match="has no labelled case"):
        check_test_source(str(empty), own)


def test_the_prediction_uses_the_final_checkpoint_of_the_trained_fold() -> None:
    command = predict_command("nnUNetv2_predict", "/other/imagesTr", "/out", 4, "2d", 0, "nnUNetTrainerMAPO",
                              "nnUNetPlans_bs32", "cuda")
    assert command[:5] == ["nnUNetv2_predict", "-i", "/other/imagesTr", "-o", "/out"]
    flags = dict(zip(command[5::2], command[6::2]))
    assert flags["-chk"] == "checkpoint_final.pth" and flags["-f"] == "0" and flags["-p"] == "nnUNetPlans_bs32"
    assert flags["-tr"] == "nnUNetTrainerMAPO" and flags["-d"] == "4" and flags["-device"] == "cuda"
    assert summary_file_name("Dataset504_CVCClinicDB") == "benchmark_summary_Dataset504_CVCClinicDB.json"
