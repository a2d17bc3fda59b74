"""Tests of ``nnunetv2_mapo.commands.synthetic``: toy datasets in nnU-Net's raw format."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunetv2_mapo.commands.synthetic import KINDS, write_synthetic_dataset

SMALL_2D = (12, 16)
SMALL_3D = (6, 8, 10)


def read_json(folder: str) -> dict:
    with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as handle:
        return json.load(handle)


def read_seg(folder: str, case: int) -> tuple[np.ndarray, dict]:
    return SimpleITKIO().read_seg(os.path.join(folder, "labelsTr", f"case_{case:03d}.nii.gz"))


def test_files_and_layout(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), dataset_id=7, name="Toy", num_cases=3, shape=SMALL_2D,
                                     num_channels=2)
    assert folder == str(tmp_path / "Dataset007_Toy")
    assert sorted(os.listdir(folder)) == ["dataset.json", "imagesTr", "labelsTr"]
    assert sorted(os.listdir(os.path.join(folder, "imagesTr"))) == [
        f"case_{i:03d}_{c:04d}.nii.gz" for i in range(3) for c in range(2)]
    assert sorted(os.listdir(os.path.join(folder, "labelsTr"))) == [f"case_{i:03d}.nii.gz" for i in range(3)]
    files = get_filenames_of_train_images_and_targets(folder, read_json(folder))  # nnU-Net finds every case
    assert sorted(files) == ["case_000", "case_001", "case_002"]
    assert all(len(entry["images"]) == 2 for entry in files.values())


@pytest.mark.parametrize("kind", KINDS)
def test_dataset_json_for_each_kind(tmp_path, kind):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=2, shape=SMALL_2D, kind=kind, num_channels=3)
    data = read_json(folder)
    assert data["numTraining"] == 2
    assert data["file_ending"] == ".nii.gz"
    assert data["channel_names"] == {"0": "synthetic0", "1": "synthetic1", "2": "synthetic2"}
    manager = LabelManager(data["labels"], regions_class_order=data.get("regions_class_order"))
    if kind == "labels":
        assert data["labels"] == {"background": 0, "object": 1, "core": 2}
        assert not manager.has_regions and not manager.has_ignore_label
    elif kind == "regions":
        assert data["labels"] == {"background": 0, "whole": [1, 2], "core": 2}
        assert data["regions_class_order"] == [1, 2]
        assert manager.has_regions and manager.num_segmentation_heads == 2
    elif kind == "regions_ignore":
        assert data["labels"] == {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}
        assert manager.has_regions and manager.has_ignore_label and manager.ignore_label == 3
    else:
        assert data["labels"]["ignore"] == 3
        assert manager.has_ignore_label and manager.ignore_label == 3
    seg = np.concatenate([read_seg(folder, i)[0].ravel() for i in range(2)])
    has_ignore = kind.endswith("ignore")
    assert set(np.unique(seg)) <= set(manager.all_labels) | ({3} if has_ignore else set())
    if has_ignore:
        assert (seg == 3).any()


def test_one_class_dataset(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=2, shape=SMALL_2D, num_classes=1)
    assert read_json(folder)["labels"] == {"background": 0, "object": 1}
    assert set(np.unique(read_seg(folder, 0)[0])) == {0, 1}


def test_one_class_ignore_label_is_two(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=1, shape=SMALL_2D, num_classes=1, kind="ignore")
    assert read_json(folder)["labels"]["ignore"] == 2
    assert set(np.unique(read_seg(folder, 0)[0])) <= {0, 1, 2}


def test_cases_have_both_classes(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=3, shape=(32, 32))
    for case in range(3):
        seg = read_seg(folder, case)[0]
        assert (seg == 1).any() and (seg == 2).any()
        assert (seg == 0).sum() > seg.size // 4


@pytest.mark.parametrize("kind", ["labels", "ignore"])
def test_empty_cases_have_no_foreground(tmp_path, kind):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=4, shape=SMALL_2D, num_empty_cases=2, kind=kind)
    for case in range(2):
        seg = read_seg(folder, case)[0]
        assert not np.isin(seg, [1, 2]).any()
    for case in range(2, 4):
        assert np.isin(read_seg(folder, case)[0], [1, 2]).any()


def test_images_carry_the_object(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=1, shape=(32, 32), noise=0.1)
    image, _ = SimpleITKIO().read_images([os.path.join(folder, "imagesTr", "case_000_0000.nii.gz")])
    seg = read_seg(folder, 0)[0]
    assert image.dtype == np.float32
    assert image[seg > 0].mean() > image[seg == 0].mean() + 0.5


def test_2d_spacing_and_shape(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=1, shape=SMALL_2D, spacing=(0.5, 0.8))
    image, properties = SimpleITKIO().read_images([os.path.join(folder, "imagesTr", "case_000_0000.nii.gz")])
    assert image.shape == (1, 1, *SMALL_2D)  # channel, a single slice, then the 2D shape
    assert list(properties["spacing"]) == pytest.approx([999.0, 0.5, 0.8])
    seg, seg_properties = read_seg(folder, 0)
    assert seg.shape == (1, 1, *SMALL_2D)
    assert list(seg_properties["spacing"]) == pytest.approx([999.0, 0.5, 0.8])


def test_3d_spacing_and_shape(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=1, dim=3, shape=SMALL_3D, spacing=(2.0, 0.7, 0.9))
    image, properties = SimpleITKIO().read_images([os.path.join(folder, "imagesTr", "case_000_0000.nii.gz")])
    assert image.shape == (1, *SMALL_3D)
    assert list(properties["spacing"]) == pytest.approx([2.0, 0.7, 0.9])  # array axis order
    assert list(read_seg(folder, 0)[1]["spacing"]) == pytest.approx([2.0, 0.7, 0.9])


def test_default_spacing_is_one(tmp_path):
    folder = write_synthetic_dataset(str(tmp_path), num_cases=1, dim=3, shape=SMALL_3D)
    assert list(read_seg(folder, 0)[1]["spacing"]) == pytest.approx([1.0, 1.0, 1.0])


def test_seed_makes_datasets_reproducible(tmp_path):
    a = write_synthetic_dataset(str(tmp_path / "a"), num_cases=2, shape=SMALL_2D, seed=3)
    b = write_synthetic_dataset(str(tmp_path / "b"), num_cases=2, shape=SMALL_2D, seed=3)
    c = write_synthetic_dataset(str(tmp_path / "c"), num_cases=2, shape=SMALL_2D, seed=4)
    assert np.array_equal(read_seg(a, 1)[0], read_seg(b, 1)[0])
    assert not np.array_equal(read_seg(a, 1)[0], read_seg(c, 1)[0])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kind": "boxes"}, "Unknown kind"),
    ({"dim": 4}, "dim must be 2 or 3"),
    ({"num_classes": 3}, "num_classes must be 1 or 2"),
    ({"num_classes": 1, "kind": "regions"}, "num_classes must be 1 or 2"),
    ({"shape": (8, 8, 8)}, "does not have 2 dimensions"),
    ({"dim": 3, "shape": (8, 8)}, "does not have 3 dimensions"),
])
def test_invalid_arguments_raise_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(str(tmp_path), num_cases=1, **kwargs)
    assert list(tmp_path.iterdir()) == []
