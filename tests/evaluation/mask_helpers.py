"""Shared by the evaluation tests: masks with known distances, and writing them as images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def ball(shape: tuple[int, ...], center: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


def plate(shape: tuple[int, ...], axis: int, index: int) -> np.ndarray:
    """One-voxel-thick plate perpendicular to ``axis`` at ``index``, away from the image border in the other axes."""
    mask = np.zeros(shape, dtype=bool)
    sl = [slice(3, s - 3) for s in shape]
    sl[axis] = slice(index, index + 1)
    mask[tuple(sl)] = True
    return mask


def write_seg(path: Path, seg: np.ndarray, spacing_xyz: tuple[float, float, float]) -> None:
    image = sitk.GetImageFromArray(seg.astype(np.uint8))  # array (z, y, x); SimpleITK spacing is (x, y, z)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path), True)


def assert_same(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), (a, b)
