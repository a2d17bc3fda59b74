"""Tests of the benchmark's semi-supervised protocol (benchmark/unlabeled.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunetv2_mapo.benchmark.split import SplitError
from nnunetv2_mapo.benchmark.unlabeled import carve_unlabeled, write_unlabeled_images

SPLIT = {"train": ["a", "b"], "val": [f"t{i}" for i in range(10)]}


def test_unlabeled_cases_leave_the_split_and_the_training_cases_stay() -> None:
    split, unlabeled = carve_unlabeled(SPLIT, 4)
    assert split["train"] == ["a", "b"] and len(unlabeled) == 4 and unlabeled == sorted(unlabeled)
    assert sorted(split["val"] + unlabeled) == sorted(SPLIT["val"]) and not set(split["val"]) & set(unlabeled)
    assert carve_unlabeled(SPLIT, 4) == (split, unlabeled)  # a fixed draw
    assert carve_unlabeled(SPLIT, 4, seed=7)[1] != unlabeled


@pytest.mark.parametrize("count", [0, 10, 11])
def test_every_test_case_cannot_become_unlabeled(count: int) -> None:
    with pytest.raises(SplitError, match="take 1 to 9"):
        carve_unlabeled(SPLIT, count)


def test_groups_become_unlabeled_whole() -> None:
    split = {"train": ["g0_1"], "val": ["g1_1", "g1_2", "g2_1", "g2_2", "g3_1", "g3_2"]}
    test, unlabeled = carve_unlabeled(split, 3, group_pattern=r"(g\d)_")
    groups = lambda cases: {c.split("_")[0] for c in cases}  # noqa: E731
    assert len(unlabeled) == 4 and not groups(unlabeled) & groups(test["val"])


def test_images_are_copied_without_labels_once(tmp_path: Path) -> None:
    raw = tmp_path / "Dataset001_X"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "a", "1": "b"}, "file_ending": ".nii.gz"}))
    for case in ("c1", "c2"):
        for channel in (0, 1):
            (raw / "imagesTr" / f"{case}_{channel:04d}.nii.gz").write_text(f"{case}{channel}")
        (raw / "labelsTr" / f"{case}.nii.gz").write_text("label")
    folder = Path(write_unlabeled_images(str(raw), ["c2"], str(tmp_path / "unlabeled")))
    assert folder.parent == tmp_path / "unlabeled" and folder.name.startswith("Dataset001_X__")
    assert sorted(p.name for p in folder.iterdir()) == ["c2_0000.nii.gz", "c2_0001.nii.gz"]
    assert (folder / "c2_0001.nii.gz").read_text() == "c21"
    assert write_unlabeled_images(str(raw), ["c2"], str(tmp_path / "unlabeled")) == str(folder)
    assert write_unlabeled_images(str(raw), ["c1"], str(tmp_path / "unlabeled")) != str(folder)
