"""Tests of ``nnunetv2_mapo.commands.convert_ph2``: PH2's folders to nnU-Net's Dataset501_PH2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from PIL import Image

from nnunetv2_mapo.commands.cli import main
from nnunetv2_mapo.commands.convert_ph2 import shrink


def write_case(root: Path, case: str, height: int = 12, width: int = 18, mask: bool = True) -> np.ndarray:
    folder = root / "PH2 Dataset images" / case
    (folder / f"{case}_Dermoscopic_Image").mkdir(parents=True)
    image = np.random.default_rng(len(case)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
    if mask:
        (folder / f"{case}_lesion").mkdir()
        lesion = np.zeros((height, width), dtype=np.uint8)
        lesion[3:9, 6:15] = 255
        Image.fromarray(lesion).save(folder / f"{case}_lesion" / f"{case}_lesion.bmp")
    return image


def test_shrink_known_values() -> None:
    image = np.arange(36, dtype=np.uint8).reshape(6, 6)
    assert shrink(image, 3, majority=False).tolist() == [[7, 10], [25, 28]]  # block means
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2, :1] = 1  # 2 of 4 voxels of the top-left block: a tie counts as lesion
    mask[2:, 2:] = 1
    mask[2, 2] = 0  # 3 of 4
    assert shrink(mask, 2, majority=True).tolist() == [[1, 0], [0, 1]]
    assert shrink(np.ones((7, 5, 3)), 2, majority=False).shape == (3, 2, 3)  # partial blocks are cut off


def test_converts_cases_that_nnunet_reads(tmp_path: Path) -> None:
    image = write_case(tmp_path / "ph2", "IMD002")
    write_case(tmp_path / "ph2", "IMD003")
    raw = tmp_path / "raw"
    assert main(["convert-ph2", str(tmp_path / "ph2"), "-o", str(raw)]) == 0
    target = raw / "Dataset501_PH2"
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".png" and len(meta["channel_names"]) == 3
    data, _ = NaturalImage2DIO().read_images([str(target / "imagesTr" / "IMD002_0000.png")])
    assert data.shape == (3, 1, 4, 6)
    assert np.allclose(data[:, 0].transpose(1, 2, 0), shrink(image, 3, majority=False))
    seg, _ = NaturalImage2DIO().read_seg(str(target / "labelsTr" / "IMD002.png"))
    assert seg.shape == (1, 1, 4, 6) and set(np.unique(seg)) == {0, 1}
    expected = np.zeros((4, 6))
    expected[1:3, 2:5] = 1  # the lesion, rows 3-8 and columns 6-14, is exactly these 3x3 blocks
    assert np.array_equal(seg[0, 0], expected)


def test_missing_mask_and_empty_folder_are_refused(tmp_path: Path, capsys) -> None:
    write_case(tmp_path / "ph2", "IMD004", mask=False)
    assert main(["convert-ph2", str(tmp_path / "ph2"), "-o", str(tmp_path / "raw")]) == 2
    assert "IMD004 has no lesion mask" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()  # nothing written before the input is checked
    (tmp_path / "empty").mkdir()
    assert main(["convert-ph2", str(tmp_path / "empty"), "-o", str(tmp_path / "raw")]) == 2
    assert "No PH2 case" in capsys.readouterr().err


@pytest.mark.parametrize("factor", ["0", "-2"])
def test_bad_factor(tmp_path: Path, capsys, factor: str) -> None:
    write_case(tmp_path / "ph2", "IMD005")
    assert main(["convert-ph2", str(tmp_path / "ph2"), "-o", str(tmp_path / "raw"), "--factor", factor]) == 2
    assert "integer >= 1" in capsys.readouterr().err
