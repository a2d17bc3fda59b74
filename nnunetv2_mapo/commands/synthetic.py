"""Small synthetic datasets in nnU-Net's raw format, for the demo and the tests.

Each case is a noisy image with an ellipse (2D) or ellipsoid (3D) of class 1 around a core of class 2. Variants
cover what nnU-Net supports: several input channels, region-based labels (BraTS-style overlapping regions), an
ignore label, and cases whose foreground is empty.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

KINDS = ("labels", "regions", "ignore", "regions_ignore")


def _case(rng: np.random.RandomState, shape: Sequence[int], num_classes: int, empty: bool
          ) -> tuple[np.ndarray, np.ndarray]:
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    seg = np.zeros(shape, dtype=np.uint8)
    if empty:
        return seg, np.full(shape, 10.0, dtype=np.float32)
    centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
    radii = [rng.uniform(0.15 * s, 0.3 * s) for s in shape]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    seg[distance <= 1.0] = 1
    if num_classes >= 2:
        seg[distance <= 0.35] = 2
    return seg, distance


def write_synthetic_dataset(
    raw_root: str,
    dataset_id: int = 990,
    name: str = "MAPOToy",
    dim: int = 2,
    num_cases: int = 24,
    shape: Sequence[int] | None = None,
    num_channels: int = 1,
    num_classes: int = 2,
    kind: str = "labels",
    num_empty_cases: int = 0,
    spacing: Sequence[float] | None = None,
    noise: float = 0.6,
    seed: int = 0,
) -> str:
    """Writes ``Dataset{id:03d}_{name}`` (imagesTr, labelsTr, dataset.json) under ``raw_root``.

    Args:
        raw_root: The ``nnUNet_raw`` folder.
        dataset_id: nnU-Net dataset id.
        name: Dataset name.
        dim: 2 (images of one slice) or 3.
        num_cases: Number of training cases.
        shape: Spatial shape (default 64x64 or 32x40x32); for ``dim=2`` a 2-tuple.
        num_channels: Input channels (modalities); the extra ones are noisier copies.
        num_classes: Foreground classes, 1 or 2.
        kind: ``'labels'``, ``'regions'`` (regions {1,2} and {2}, needs ``num_classes=2``), ``'ignore'`` (an
            ignore label over a band of each image) or ``'regions_ignore'`` (both).
        num_empty_cases: Cases with no foreground at all.
        spacing: Voxel spacing in mm, in array axis order.
        noise: Standard deviation of the image noise (object contrast is 1).
        seed: Random seed.

    Returns:
        The dataset folder.

    Raises:
        ValueError: An unknown kind or an impossible combination.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; allowed values: {list(KINDS)}.")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}.")
    if num_classes not in (1, 2) or (kind.startswith("regions") and num_classes != 2):
        raise ValueError("num_classes must be 1 or 2 (2 for region-based datasets).")
    shape = tuple(shape or ((64, 64) if dim == 2 else (32, 40, 32)))
    if len(shape) != dim:
        raise ValueError(f"shape {shape} does not have {dim} dimensions.")
    rng = np.random.RandomState(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    volume_shape = (1, *shape) if dim == 2 else shape
    spacing = tuple(spacing or (1.0,) * dim)
    itk_spacing = tuple(reversed((999.0, *spacing) if dim == 2 else spacing))
    ignore_value = num_classes + 1
    for index in range(num_cases):
        seg, distance = _case(rng, shape, num_classes, empty=index < num_empty_cases)
        if kind.endswith("ignore"):
            band = rng.randint(0, shape[0] - shape[0] // 4)
            seg[band:band + shape[0] // 4] = ignore_value
        contrast = np.clip(1.5 - distance, 0, 1)  # soft object edges
        case_id = f"case_{index:03d}"
        for channel in range(num_channels):
            image = contrast + rng.normal(0, noise * (1 + 0.5 * channel), size=shape)
            _write(image.astype(np.float32).reshape(volume_shape), itk_spacing,
                   os.path.join(folder, "imagesTr", f"{case_id}_{channel:04d}.nii.gz"))
        _write(seg.reshape(volume_shape), itk_spacing, os.path.join(folder, "labelsTr", f"{case_id}.nii.gz"))
    labels: dict = {"background": 0, "object": 1}
    if num_classes == 2:
        labels["core"] = 2
    dataset_json: dict = {
        "channel_names": {str(c): f"synthetic{c}" for c in range(num_channels)},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "Synthetic ellipses for nnunetv2_mapo tests and demo",
    }
    if kind.startswith("regions"):
        dataset_json["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
        dataset_json["regions_class_order"] = [1, 2]
    if kind.endswith("ignore"):
        dataset_json["labels"]["ignore"] = ignore_value
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump(dataset_json, handle, indent=2)
    return folder


def _write(array: np.ndarray, spacing: Sequence[float], path: str) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(image, path)
