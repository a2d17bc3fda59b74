"""HD95 and ASD between two binary masks, in the units of the image spacing (MONAI).

Each metric is computed per class/region and case, in millimetres (more precisely: in the units of the image
spacing):

``HD95``
    95th-percentile symmetric Hausdorff distance: ``max(P95(d(S_ref -> S_pred)), P95(d(S_pred -> S_ref)))``,
    the larger of the two *directed* 95th percentiles (not the percentile of the pooled distances). ``P95`` uses
    linear interpolation between order statistics (``torch.quantile``).
``ASD``
    Average symmetric surface distance: the mean over *all* surface voxels of both masks of the distance to the
    other mask's surface, ``(sum d(S_ref -> S_pred) + sum d(S_pred -> S_ref)) / (|S_ref| + |S_pred|)``.

``NSD``
    Normalised surface Dice at tolerance tau (Nikolov et al. 2021): the share of both surfaces that lies within
    tau of the other surface, ``(|{s in S_ref: d(s, S_pred) <= tau}| + |{s in S_pred: d(s, S_ref) <= tau}|) /
    (|S_ref| + |S_pred|)``, in [0, 1], higher is better (``monai.metrics.compute_surface_dice``; here each surface
    element is a surface voxel, as for the distances above).

All three come from MONAI (``monai.metrics.compute_hausdorff_distance(percentile=95, directed=False)``,
``monai.metrics.compute_average_surface_distance(symmetric=True)``, ``monai.metrics.compute_surface_dice``). A
surface voxel is a foreground voxel with at least one face-neighbour (6-connectivity in 3D, 4 in 2D) that is
background or outside the image; ``d(A -> B)`` is, for every surface voxel of ``A``, the exact Euclidean distance
between voxel centres to the nearest surface voxel of ``B``, with each axis scaled by its spacing. Identical masks
give distances 0 and NSD 1.

Spacing: nnU-Net's reader/writer returns ``properties['spacing']`` already in the order of the array axes
(SimpleITK reports spacing as ``(x, y, z)`` while ``GetArrayFromImage`` gives ``(z, y, x)`` arrays; nnU-Net's
``SimpleITKIO``/``NibabelIO`` reverse it for us). So ``properties['spacing'][i]`` is used as the spacing of axis
``i`` of the segmentation array (after dropping its channel axis) and is *not* reversed again. Axes of length 1
are dropped before computing surfaces, so nnU-Net's 2D convention (array ``(1, x, y)`` with a dummy spacing of 999
for the first axis) gives 2D contour distances.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

SURFACE_METRICS = ("HD95", "ASD", "NSD")
DEFAULT_NSD_TOLERANCE_MM = 2.0  # docs/evaluation.md says why


def surface_metrics(
    reference_mask: np.ndarray, prediction_mask: np.ndarray, spacing: Sequence[float],
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict[str, float]:
    """HD95, ASD and NSD between one pair of binary masks (definitions in the module docstring).

    Args:
        reference_mask: Binary reference mask, any number of spatial axes (no channel axis). Non-zero is foreground.
        prediction_mask: Binary prediction mask with the same shape.
        spacing: Voxel spacing per array axis, in the order of the array axes (``properties['spacing']`` of
            nnU-Net's readers); one positive number per axis. Axes of length 1 are ignored.
        nsd_tolerance: The NSD's tolerance tau, in the units of ``spacing`` (>= 0).

    Returns:
        ``{'HD95': float, 'ASD': float, 'NSD': float}``, distances in the units of ``spacing``, NSD in [0, 1]. All
        are NaN if either mask is empty (see the module docstring); they are never inf.

    Raises:
        ValueError: If the shapes differ, ``spacing`` does not have one positive finite value per axis, or the
            tolerance is negative or not finite.
        ImportError: If MONAI is not installed.
    """
    reference = np.asarray(reference_mask).astype(bool, copy=False)
    prediction = np.asarray(prediction_mask).astype(bool, copy=False)
    if reference.shape != prediction.shape:
        raise ValueError(f"Reference and prediction masks differ in shape: {reference.shape} vs {prediction.shape}.")
    spacing_f = [float(s) for s in spacing]
    if len(spacing_f) != reference.ndim:
        raise ValueError(
            f"Got {len(spacing_f)} spacing values for a mask with {reference.ndim} axes (shape {reference.shape}); "
            "pass one spacing per array axis, in array-axis order."
        )
    if not all(np.isfinite(s) and s > 0 for s in spacing_f):
        raise ValueError(f"Spacing must be positive and finite, got {spacing_f}.")
    if not (np.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise ValueError(f"The NSD tolerance must be a finite number >= 0 (mm), got {nsd_tolerance}.")
    if not reference.any() or not prediction.any():
        return dict.fromkeys(SURFACE_METRICS, float("nan"))

    keep = [axis for axis, size in enumerate(reference.shape) if size > 1] or [reference.ndim - 1]
    new_shape = tuple(reference.shape[axis] for axis in keep)
    reference, prediction = reference.reshape(new_shape), prediction.reshape(new_shape)
    spacing_f = [spacing_f[axis] for axis in keep]
    reference, prediction = _crop_to_union(reference, prediction)

    try:
        import torch
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "HD95/ASD need MONAI: pip install 'monai>=1.5,<2' (it is a dependency of nnunetv2_mapo)."
        ) from exc
    y = torch.from_numpy(reference[None, None])
    y_pred = torch.from_numpy(prediction[None, None])
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated argument internally; nothing the caller can act on.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, directed=False, spacing=spacing_f
        )
        asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing_f)
        nsd = compute_surface_dice(y_pred, y, [float(nsd_tolerance)], include_background=True, spacing=spacing_f)
    return {"HD95": float(hd95.reshape(-1)[0]), "ASD": float(asd.reshape(-1)[0]), "NSD": float(nsd.reshape(-1)[0])}


def _crop_to_union(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crops both (non-empty) masks to their union's bounding box plus a 1-voxel margin, clipped to the image.

    Surfaces and the distances between them are unchanged (outside the image counts as background either way);
    it only keeps MONAI's float copies of the masks small for large images.
    """
    union = reference | prediction
    slices = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        slices.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    return reference[tuple(slices)], prediction[tuple(slices)]
