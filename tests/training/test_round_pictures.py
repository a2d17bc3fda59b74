"""Tests of ``nnunetv2_mapo.training.round_pictures``: the picture of a round's pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunetv2_mapo.training.round_pictures import as_label_map, most_foreground_slice, write_round_picture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def item(channels: int, patch: tuple[int, ...], regions: int = 0) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (regions, *patch) if regions else patch
    mask = lambda: (torch.rand(shape, generator=generator) > 0.5).to(torch.uint8)  # noqa: E731
    return {"image": torch.randn(channels, *patch, generator=generator), "reference": mask(), "network": mask(),
            "chosen": mask(), "rejected": mask(), "key": "case_000", "dice_network": 0.9, "dice_chosen": 0.8,
            "dice_rejected": 0.5}


def test_label_maps_of_labels_and_regions() -> None:
    labels = torch.tensor([[0, 2], [1, 0]], dtype=torch.uint8)
    assert as_label_map(labels, 2).tolist() == [[0, 2], [1, 0]]
    regions = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.bool)  # whole tumour, core
    assert as_label_map(regions, 2).tolist() == [[2, 1], [0, 0]]  # nested regions read as labels


def test_most_foreground_slice() -> None:
    volume = np.zeros((5, 4, 4), dtype=np.int64)
    volume[1, :2, :2] = 1
    volume[3, :, :3] = 2  # 12 voxels: the most
    volume[4, :3, :3] = 1
    assert most_foreground_slice(volume) == 3
    assert most_foreground_slice(np.zeros((3, 2, 2))) == 0


@pytest.mark.parametrize(("channels", "patch", "regions"), [(1, (24, 20), 0), (3, (24, 20), 0), (1, (6, 16, 16), 0),
                                                           (2, (6, 16, 16), 2)])
def test_writes_a_png_for_2d_3d_rgb_and_regions(tmp_path, channels, patch, regions) -> None:
    path = write_round_picture([item(channels, patch, regions)] * 2, str(tmp_path / "rounds" / "round_0003.png"),
                               "MAPO round 3")
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_MAGIC


def test_no_items_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="No items"):
        write_round_picture([], str(tmp_path / "x.png"), "")
