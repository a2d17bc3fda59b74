"""Tests of ``nnunetv2_mapo.evaluation.surface``: HD95 and ASD of mask pairs with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from mask_helpers import ball, plate
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

from nnunetv2_mapo.evaluation.surface import surface_metrics

NNUNET_KEYS = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")


# --------------------------------------------------------------------------------------------------------------------
# surface_metrics on mask pairs
# --------------------------------------------------------------------------------------------------------------------


def test_identical_masks_give_zero() -> None:
    mask = ball((24, 24, 24), (12, 11, 13), 7)
    assert surface_metrics(mask, mask, (3.0, 0.8, 1.2)) == {"HD95": 0.0, "ASD": 0.0, "NSD": 1.0}


def test_thin_plate_shift_is_exact_and_scales_with_the_spacing_of_that_axis() -> None:
    # A one-voxel-thick plate shifted by k voxels perpendicular to itself: every voxel of either plate is a surface
    # voxel and its nearest voxel of the other plate lies straight along the shift axis, so every surface distance is
    # exactly k * spacing[axis] -> HD95 == ASD == k * spacing[axis], with no discretisation tolerance.
    spacing = (3.0, 1.0, 0.5)
    shape = (12, 14, 16)
    k = 2
    for axis in range(3):
        result = surface_metrics(plate(shape, axis, 4), plate(shape, axis, 4 + k), spacing)
        assert result["HD95"] == pytest.approx(k * spacing[axis])
        assert result["ASD"] == pytest.approx(k * spacing[axis])
    # the 3 mm axis gives 3x the distance of the 1 mm axis for the same voxel shift
    along_3mm = surface_metrics(plate(shape, 0, 4), plate(shape, 0, 4 + k), spacing)["HD95"]
    along_1mm = surface_metrics(plate(shape, 1, 4), plate(shape, 1, 4 + k), spacing)["HD95"]
    assert along_3mm == pytest.approx(3 * along_1mm)


def test_shifted_sphere() -> None:
    # Sphere of radius R translated by k voxels (k << R). Translation maps each surface voxel onto a surface voxel of
    # the other mask at distance exactly k, so all distances are <= k: HD95 <= k holds exactly. In the continuum the
    # distance at polar angle t (from the shift axis) is about k*|cos t|, and |cos t| is uniform on the sphere, so
    # HD95 ~ 0.95 k and ASD ~ k/2 (not k: most of the surface moves sideways). Voxel surfaces are not uniformly sampled
    # and the digitised caps are flat, which pushes HD95 up to k; +-10% of k covers that for R >= 8 (measured: ASD
    # 0.47-0.50 k for k = 2..4).
    shape = (40, 40, 40)
    reference = ball(shape, (20, 20, 20), 10)
    for k in (2, 4):
        result = surface_metrics(reference, np.roll(reference, k, axis=1), (1.0, 1.0, 1.0))
        assert 0.9 * k <= result["HD95"] <= k + 1e-6
        assert 0.4 * k <= result["ASD"] <= 0.6 * k
    # same shift with 2 mm voxels along the shift axis: bounded by 2 * k, and larger than in 1 mm voxels
    k = 2
    iso = surface_metrics(reference, np.roll(reference, k, axis=1), (1.0, 1.0, 1.0))
    aniso = surface_metrics(reference, np.roll(reference, k, axis=1), (1.0, 2.0, 1.0))
    assert aniso["HD95"] <= 2 * k + 1e-6
    assert aniso["HD95"] > iso["HD95"] and aniso["ASD"] > iso["ASD"]


def test_concentric_spheres_distance_equals_radius_difference() -> None:
    # Radii R and R + k with the same centre: every surface point is k away from the other surface, so ASD ~ HD95 ~ k.
    # Tolerance: each digitised surface deviates from the ideal sphere by up to about half a voxel diagonal, so ASD is
    # within 0.3 of k (errors average out) and HD95 (a tail value) within [k, k + 1].
    shape = (44, 44, 44)
    for k in (1, 3):
        result = surface_metrics(ball(shape, (22, 22, 22), 12), ball(shape, (22, 22, 22), 12 + k), (1.0, 1.0, 1.0))
        assert abs(result["ASD"] - k) <= 0.3
        assert k <= result["HD95"] <= k + 1.0


def test_nnunet_2d_layout_drops_the_dummy_axis() -> None:
    # nnU-Net's 2D convention: array (1, x, y), spacing (999, sx, sy). Without dropping the length-1 axis every pixel
    # would be a surface voxel (its neighbours along that axis lie outside the image) and the interior would count.
    square = np.zeros((1, 20, 20), dtype=bool)
    square[0, 5:15, 5:15] = True
    shifted = np.roll(square, 2, axis=1)
    result = surface_metrics(square, shifted, (999.0, 0.5, 1.0))
    assert result == surface_metrics(square[0], shifted[0], (0.5, 1.0))
    assert result["HD95"] == pytest.approx(2 * 0.5)  # top/bottom edges move by 2 pixels of 0.5 mm
    assert result["ASD"] < 2 * 0.5


def test_matches_monai_on_uncropped_masks() -> None:
    # surface_metrics crops to the union's bounding box before calling MONAI; the result must equal MONAI's
    # compute_hausdorff_distance(percentile=95, symmetric) / compute_average_surface_distance(symmetric) on the full
    # arrays, including for masks touching the image border.
    rng = np.random.default_rng(0)
    shape = (18, 22, 26)
    reference = np.zeros(shape, dtype=bool)
    prediction = np.zeros(shape, dtype=bool)
    reference[0:7, 3:15, 10:26] = rng.random((7, 12, 16)) > 0.3
    prediction[1:9, 2:12, 12:26] = rng.random((8, 10, 14)) > 0.4
    spacing = (2.5, 0.7, 1.3)
    result = surface_metrics(reference, prediction, spacing)
    y, y_pred = torch.from_numpy(reference[None, None]), torch.from_numpy(prediction[None, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
        asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
        nsd = compute_surface_dice(y_pred, y, [1.5], include_background=True, spacing=list(spacing))
    assert result["HD95"] == pytest.approx(float(hd95))
    assert result["ASD"] == pytest.approx(float(asd))
    assert surface_metrics(reference, prediction, spacing, nsd_tolerance=1.5)["NSD"] == pytest.approx(float(nsd))
    assert result["HD95"] > 0 and result["ASD"] > 0


@pytest.mark.parametrize(("reference_empty", "prediction_empty"), [(True, True), (True, False), (False, True)], ids=str)
def test_empty_masks_give_nan_without_warnings(reference_empty: bool, prediction_empty: bool) -> None:
    mask = ball((16, 16, 16), (8, 8, 8), 4)
    empty = np.zeros_like(mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = surface_metrics(empty if reference_empty else mask, empty if prediction_empty else mask, (1, 1, 1))
    assert set(result) == {"HD95", "ASD", "NSD"}
    assert all(math.isnan(v) for v in result.values())


def test_hd95_is_the_larger_directed_percentile_and_symmetric() -> None:
    # Prediction = reference ball + a 4x4x4 cube 16 voxels beyond the ball's surface. The cube holds ~8% of the
    # prediction's surface voxels, so the directed prediction->reference 95th percentile lands on cube distances
    # (>= 16), while the reference->prediction one is 0. HD95 is the larger of the two directed percentiles; the
    # percentile of the pooled distances would be 0 here (the cube is only ~4% of all surface voxels).
    shape = (30, 30, 50)
    reference = ball(shape, (15, 15, 12), 8)  # surface at x = 20 along the x axis through the centre
    prediction = reference.copy()
    prediction[13:17, 13:17, 36:40] = True
    result = surface_metrics(reference, prediction, (1.0, 1.0, 1.0))
    assert 16.0 <= result["HD95"] <= 20.0
    assert 0.0 < result["ASD"] < 2.0
    assert surface_metrics(prediction, reference, (1.0, 1.0, 1.0)) == result


def test_surface_metrics_rejects_bad_input() -> None:
    mask = np.ones((4, 5, 6), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        surface_metrics(mask, mask[:, :, :5], (1, 1, 1))
    with pytest.raises(ValueError, match="one spacing per array axis"):
        surface_metrics(mask, mask, (1, 1))
    with pytest.raises(ValueError, match="positive"):
        surface_metrics(mask, mask, (1, 0, 1))
    for tolerance in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NSD tolerance"):
            surface_metrics(mask, mask, (1, 1, 1), nsd_tolerance=tolerance)


# ------------------------------------------------------------------------------------------ normalised surface Dice
def test_nsd_of_a_shifted_plate_steps_from_0_to_1_at_the_shift_distance() -> None:
    # Every surface distance of two plates k voxels apart is exactly k * spacing[axis] (see the plate test above), so
    # NSD is 0 below that tolerance and 1 from it on (the tolerance is inclusive), whatever the axis' spacing.
    spacing = (3.0, 1.0, 0.5)
    shape = (12, 14, 16)
    k = 2
    for axis in range(3):
        distance = k * spacing[axis]
        shifted = (plate(shape, axis, 4), plate(shape, axis, 4 + k))
        assert surface_metrics(*shifted, spacing, nsd_tolerance=0.99 * distance)["NSD"] == 0.0
        assert surface_metrics(*shifted, spacing, nsd_tolerance=distance)["NSD"] == 1.0
        assert surface_metrics(*shifted, spacing, nsd_tolerance=1.5 * distance)["NSD"] == 1.0


def test_nsd_of_a_shifted_sphere() -> None:
    # A sphere translated by k voxels: every surface distance is <= k (see test_shifted_sphere), so a tolerance of k
    # gives NSD 1; below k the caps (distance ~k) fall outside and the sides (~0) inside, so 0 < NSD < 1, and it
    # grows with the tolerance. With 2 mm voxels along the shift the same voxel shift needs twice the tolerance.
    shape = (40, 40, 40)
    reference = ball(shape, (20, 20, 20), 10)
    shifted = np.roll(reference, 3, axis=1)
    assert surface_metrics(reference, shifted, (1.0, 1.0, 1.0), nsd_tolerance=3.0)["NSD"] == 1.0
    values = [surface_metrics(reference, shifted, (1.0, 1.0, 1.0), nsd_tolerance=t)["NSD"] for t in (0.5, 1.0, 2.0)]
    assert 0.0 < values[0] < values[1] < values[2] < 1.0
    aniso = [surface_metrics(reference, shifted, (1.0, 2.0, 1.0), nsd_tolerance=t)["NSD"] for t in (3.0, 6.0)]
    assert aniso[0] < 1.0 and aniso[1] == 1.0


def test_identical_masks_have_nsd_one_even_at_zero_tolerance() -> None:
    mask = ball((16, 16, 16), (8, 8, 8), 5)
    assert surface_metrics(mask, mask, (1.0, 1.0, 1.0), nsd_tolerance=0.0)["NSD"] == 1.0
