"""Folder evaluation like ``nnUNetv2_evaluate_folder``, plus boundary metrics (``nnunetv2_mapo evaluate``).

The output ``summary.json`` has exactly the layout of nnU-Net's
``nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder`` (``metric_per_case``, ``mean``,
``foreground_mean``; written with nnU-Net's ``save_summary_json``), and every value nnU-Net writes (Dice, IoU, TP,
FP, FN, TN, n_pred, n_ref) is computed by nnU-Net's own ``compute_metrics``. Each class/region gains HD95 and ASD in
millimetres and the normalised surface Dice NSD; their definitions: :mod:`nnunetv2_mapo.evaluation.surface`.

Empty classes (per case and class/region; "empty" means no voxel of that class outside the ignore label, i.e.
nnU-Net's ``n_ref == 0`` / ``n_pred == 0``):

* both empty: ``HD95 = ASD = NSD = NaN`` (nnU-Net's Dice is NaN too);
* reference empty, prediction not (false-positive structure): ``HD95 = ASD = NSD = NaN``;
* prediction empty, reference not (missed structure): ``HD95 = ASD = NSD = NaN``.

A distance between a surface and nothing does not exist, and any finite stand-in (image diagonal, a fixed
penalty) depends on the field of view and would dominate the mean, so it is not invented here. These cases are
not hidden either: Dice is 0 for both one-sided cases, and ``mean[class]`` counts each kind of case in
``n_both_empty``, ``n_ref_empty_pred_nonempty`` and ``n_pred_empty_ref_nonempty``, next to ``n_surface_evaluated``
(cases where both masks are non-empty, the only ones that enter the HD95/ASD/NSD means). Read those means as
"boundary error of the structures that were found", always together with Dice and these counts. Per-class means
use ``nanmean`` (as nnU-Net does for every metric), so NaN cases are left out; a class without any evaluable case
has a NaN mean. ``foreground_mean`` is, as in nnU-Net, the mean over foreground classes of the per-class means:
nnU-Net's metrics keep nnU-Net's plain mean, HD95/ASD/NSD use ``nanmean`` over the classes that have a value, and the
four counts are *totals* over the foreground classes. No value is ever ``inf``. NaN is written to JSON as ``NaN``,
as nnU-Net does for Dice.

Ignore label: voxels carrying the dataset's ignore label in the reference are excluded from both masks before the
surfaces are extracted (the same voxels nnU-Net leaves out of TP/FP/FN). Both masks are thereby cut the same way at
the border of the ignored area, so a prediction that runs on into the unlabelled area is not penalised.

Workers are spawned as in nnU-Net; with ``num_processes=1`` (``-np 1``) the cases are evaluated in this process.
Requires MONAI (``monai>=1.5,<2``); it is imported lazily, on the first distance computation.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, maybe_mkdir_p, subfiles
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics, region_or_label_to_mask, save_summary_json
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_mapo.evaluation.surface import DEFAULT_NSD_TOLERANCE_MM, SURFACE_METRICS, surface_metrics

LabelOrRegion = int | tuple[int, ...]

EMPTY_COUNT_KEYS = ("n_surface_evaluated", "n_both_empty", "n_ref_empty_pred_nonempty", "n_pred_empty_ref_nonempty")
_MAX_LISTED = 10


class EvaluationInputError(ValueError):
    """Raised for unusable evaluation input (missing folder/file, unmatched file names, bad arguments)."""


class _PreloadedSegmentations:
    """Stands in for a reader/writer inside nnU-Net's ``compute_metrics`` so each file is read only once."""

    def __init__(self, segmentations: dict[str, tuple[np.ndarray, dict]]) -> None:
        self._segmentations = segmentations

    def read_seg(self, seg_fname: str) -> tuple[np.ndarray, dict]:
        return self._segmentations[seg_fname]


def _spacing_of(seg: np.ndarray, properties: dict, filename: str) -> list[float]:
    if seg.ndim < 2 or seg.shape[0] != 1:
        raise ValueError(f"{filename}: expected a single-channel segmentation (1, *spatial), got shape {seg.shape}.")
    spacing = properties.get("spacing")
    if spacing is None or len(spacing) != seg.ndim - 1:
        raise ValueError(
            f"{filename}: the reader returned spacing {spacing!r} for an image of spatial shape {seg.shape[1:]}; "
            "expected one value per spatial axis."
        )
    return [float(s) for s in spacing]


def compute_metrics_with_surface(
    reference_file: str,
    prediction_file: str,
    image_reader_writer: BaseReaderWriter,
    labels_or_regions: Sequence[LabelOrRegion],
    ignore_label: int | None = None,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict:
    """Metrics of one case: nnU-Net's ``compute_metrics`` output plus ``HD95`` and ``ASD`` per class/region.

    Args:
        reference_file: Reference segmentation file.
        prediction_file: Predicted segmentation file.
        image_reader_writer: nnU-Net reader/writer instance for these files.
        labels_or_regions: Labels (ints) or regions (tuples of labels) to evaluate.
        ignore_label: The dataset's ignore label, or None.
        nsd_tolerance: The NSD's tolerance in mm.

    Returns:
        ``{'reference_file', 'prediction_file', 'metrics': {label_or_region: {metric: value}}}`` as nnU-Net's
        ``compute_metrics``, each metrics dict extended by ``HD95``, ``ASD`` (mm) and ``NSD``.

    Raises:
        ValueError: If the two images differ in shape or spacing, or are not single-channel.
    """
    seg_ref, props_ref = image_reader_writer.read_seg(reference_file)
    seg_pred, props_pred = image_reader_writer.read_seg(prediction_file)
    if seg_ref.shape != seg_pred.shape:
        raise ValueError(
            f"Shape mismatch: reference {reference_file} has shape {seg_ref.shape}, prediction {prediction_file} has "
            f"{seg_pred.shape}. Predictions must be exported in the geometry of the reference images."
        )
    spacing = _spacing_of(seg_ref, props_ref, reference_file)
    spacing_pred = _spacing_of(seg_pred, props_pred, prediction_file)
    if not np.allclose(spacing, spacing_pred, rtol=1e-3, atol=1e-6):
        raise ValueError(
            f"Spacing mismatch: reference {reference_file} has spacing {spacing}, prediction {prediction_file} has "
            f"{spacing_pred}. Predictions must be exported in the geometry of the reference images."
        )

    preloaded = _PreloadedSegmentations({reference_file: (seg_ref, props_ref), prediction_file: (seg_pred, props_pred)})
    results = compute_metrics(reference_file, prediction_file, preloaded, list(labels_or_regions), ignore_label)

    ref, pred = seg_ref[0], seg_pred[0]
    valid = ref != ignore_label if ignore_label is not None else None
    for label_or_region in labels_or_regions:
        mask_ref = region_or_label_to_mask(ref, label_or_region)
        mask_pred = region_or_label_to_mask(pred, label_or_region)
        if valid is not None:
            mask_ref &= valid
            mask_pred &= valid
        results["metrics"][label_or_region].update(surface_metrics(mask_ref, mask_pred, spacing, nsd_tolerance))
    return results


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def pair_files(folder_ref: str, folder_pred: str, file_ending: str, chill: bool = True) -> tuple[list[str], list[str]]:
    """Matches prediction files to reference files by file name, as ``nnUNetv2_evaluate_folder`` does.

    Only directory listings are read, so problems surface before any image is loaded.

    Args:
        folder_ref: Folder with the reference segmentations.
        folder_pred: Folder with the predicted segmentations.
        file_ending: File ending of the segmentations (``dataset.json``'s ``file_ending``, e.g. ``.nii.gz``).
        chill: If False, every reference file must have a prediction. If True, only the predicted cases are
            evaluated.

    Returns:
        ``(reference_paths, prediction_paths)``, aligned, one entry per evaluated case.

    Raises:
        EvaluationInputError: If a folder is missing, a folder holds no file with ``file_ending``, a prediction has
            no reference of the same name, or (``chill=False``) a reference has no prediction.
    """
    for role, folder in (("reference", folder_ref), ("prediction", folder_pred)):
        if not isdir(folder):
            raise EvaluationInputError(f"The {role} folder does not exist or is not a folder: {folder}")
    names_ref = subfiles(folder_ref, suffix=file_ending, join=False)
    names_pred = subfiles(folder_pred, suffix=file_ending, join=False)
    for role, folder, names in (("reference", folder_ref, names_ref), ("prediction", folder_pred, names_pred)):
        if not names:
            raise EvaluationInputError(
                f"No {role} files ending with '{file_ending}' in {folder}. Check the folder, and that the file "
                "ending (dataset.json 'file_ending') matches the files."
            )
    unmatched = sorted(set(names_pred) - set(names_ref))
    if unmatched:
        raise EvaluationInputError(
            f"{len(unmatched)} prediction file(s) in {folder_pred} have no reference file of the same name in "
            f"{folder_ref}: {_listing(unmatched)}. Predictions must be named exactly like their reference "
            "segmentation; rename or remove these files, or check that the two folders belong together."
        )
    if not chill:
        missing = sorted(set(names_ref) - set(names_pred))
        if missing:
            raise EvaluationInputError(
                f"{len(missing)} reference file(s) have no prediction in {folder_pred}: {_listing(missing)}. Predict "
                "these cases, or pass chill=True (--chill) to evaluate only the cases that were predicted."
            )
    return [join(folder_ref, n) for n in names_pred], [join(folder_pred, n) for n in names_pred]


def _nanmean(values: Sequence[float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN input -> NaN, as in nnU-Net
        return float(np.nanmean(np.asarray(values, dtype=float)))


def aggregate_metrics(
    results: Sequence[dict], regions_or_labels: Sequence[LabelOrRegion]
) -> tuple[dict[LabelOrRegion, dict[str, float]], dict[str, float]]:
    """Per-class means and the foreground mean of per-case results (rules in the module docstring).

    Args:
        results: Per-case dicts from ``compute_metrics_with_surface``.
        regions_or_labels: The evaluated labels/regions, in output order.

    Returns:
        ``(mean, foreground_mean)`` in nnU-Net's layout, plus the empty-case counts.
    """
    metric_names = list(results[0]["metrics"][regions_or_labels[0]].keys())
    means: dict[LabelOrRegion, dict[str, float]] = {}
    for r in regions_or_labels:
        per_case = [case["metrics"][r] for case in results]
        means[r] = {m: _nanmean([c[m] for c in per_case]) for m in metric_names}
        ref_empty = np.array([c["n_ref"] == 0 for c in per_case], dtype=bool)
        pred_empty = np.array([c["n_pred"] == 0 for c in per_case], dtype=bool)
        means[r]["n_surface_evaluated"] = int(np.sum(~ref_empty & ~pred_empty))
        means[r]["n_both_empty"] = int(np.sum(ref_empty & pred_empty))
        means[r]["n_ref_empty_pred_nonempty"] = int(np.sum(ref_empty & ~pred_empty))
        means[r]["n_pred_empty_ref_nonempty"] = int(np.sum(~ref_empty & pred_empty))

    foreground = [r for r in regions_or_labels if not (r == 0 or r == "0")]
    foreground_mean: dict[str, float] = {}
    for m in metric_names:
        values = [means[r][m] for r in foreground]
        foreground_mean[m] = _nanmean(values) if m in SURFACE_METRICS else float(np.mean(values))
    for key in EMPTY_COUNT_KEYS:
        foreground_mean[key] = int(sum(means[r][key] for r in foreground))
    return means, foreground_mean


def _check_tolerance(nsd_tolerance: float) -> None:
    if isinstance(nsd_tolerance, bool) or not isinstance(nsd_tolerance, (int, float)) or not (
            np.isfinite(nsd_tolerance) and nsd_tolerance >= 0):
        raise EvaluationInputError(f"The NSD tolerance must be a number of mm >= 0, got {nsd_tolerance!r}.")


def _check_output_and_processes(output_file: str | None, num_processes: int) -> None:
    if output_file is not None and not output_file.endswith(".json"):
        raise EvaluationInputError(f"The output file must end with .json, got {output_file}.")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise EvaluationInputError(f"The number of processes must be a positive integer, got {num_processes!r}.")


def compute_metrics_on_folder_with_surface(
    folder_ref: str,
    folder_pred: str,
    output_file: str | None,
    image_reader_writer: BaseReaderWriter,
    file_ending: str,
    regions_or_labels: Sequence[LabelOrRegion],
    ignore_label: int | None = None,
    num_processes: int = default_num_processes,
    chill: bool = True,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict:
    """nnU-Net's ``compute_metrics_on_folder`` with HD95, ASD and NSD added (same arguments, same output layout).

    Args:
        folder_ref: Folder with the reference segmentations.
        folder_pred: Folder with the predicted segmentations (file names as in ``folder_ref``).
        output_file: Where to write the summary (must end with ``.json``; parent folders are created), or None.
        image_reader_writer: nnU-Net reader/writer instance for the segmentation files.
        file_ending: File ending of the segmentations, e.g. ``.nii.gz``.
        regions_or_labels: Labels (ints) or regions (tuples of labels) to evaluate.
        ignore_label: The dataset's ignore label, or None.
        num_processes: Worker processes (spawned, as in nnU-Net); 1 evaluates in this process.
        chill: If False, every reference file must have a prediction.
        nsd_tolerance: The NSD's tolerance in mm.

    Returns:
        ``{'metric_per_case': [...], 'mean': {label_or_region: {...}}, 'foreground_mean': {...}}`` with tuple keys
        for regions, exactly as nnU-Net's ``compute_metrics_on_folder`` returns it.

    Raises:
        EvaluationInputError: For bad arguments or unmatched files (see ``pair_files``), before any image is read.
        ValueError: If a reference/prediction pair differs in shape or spacing.
    """
    _check_output_and_processes(output_file, num_processes)
    _check_tolerance(nsd_tolerance)
    if not regions_or_labels:
        raise EvaluationInputError("No labels or regions to evaluate; pass at least one.")
    regions_or_labels = list(regions_or_labels)
    files_ref, files_pred = pair_files(folder_ref, folder_pred, file_ending, chill=chill)
    if output_file is not None:
        maybe_mkdir_p(os.path.dirname(os.path.abspath(output_file)))

    jobs = [(r, p, image_reader_writer, regions_or_labels, ignore_label, nsd_tolerance)
            for r, p in zip(files_ref, files_pred)]
    n_workers = min(num_processes, len(jobs))
    if n_workers == 1:
        results = [compute_metrics_with_surface(*job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(n_workers) as pool:
            results = pool.starmap(compute_metrics_with_surface, jobs)

    means, foreground_mean = aggregate_metrics(results, regions_or_labels)
    for case in results:
        recursive_fix_for_json_export(case)
    recursive_fix_for_json_export(means)
    recursive_fix_for_json_export(foreground_mean)
    summary = {"metric_per_case": results, "mean": means, "foreground_mean": foreground_mean}
    if output_file is not None:
        save_summary_json(summary, output_file)
    return summary


def _load_json_file(path: str, what: str, flag: str) -> dict[str, Any]:
    if not isfile(path):
        raise EvaluationInputError(f"The {what} file does not exist: {path}. Pass an existing file with {flag}.")
    try:
        content = load_json(path)
    except ValueError as exc:
        raise EvaluationInputError(f"The {what} file {path} is not valid JSON: {exc}") from exc
    if not isinstance(content, dict):
        raise EvaluationInputError(f"The {what} file {path} must contain a JSON object.")
    return content


def evaluate_folder(
    gt_folder: str,
    pred_folder: str,
    dataset_json_file: str,
    plans_file: str,
    output_file: str | None = None,
    num_processes: int = 1,
    chill: bool = True,
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict:
    """:func:`compute_metrics_on_folder_with_surface` configured from dataset.json and plans files, like
    ``nnUNetv2_evaluate_folder``.

    Args:
        gt_folder: Folder with the reference segmentations.
        pred_folder: Folder with the predicted segmentations.
        dataset_json_file: The dataset's ``dataset.json``.
        plans_file: The ``plans.json`` used for the predictions.
        output_file: Summary path; default ``pred_folder/summary.json``.
        num_processes: Worker processes.
        chill: If False, every reference file must have a prediction.
        nsd_tolerance: The NSD's tolerance in mm.

    Returns:
        The summary (see :func:`compute_metrics_on_folder_with_surface`).

    Raises:
        EvaluationInputError: Unusable input, before any image is read.
    """
    dataset_json = _load_json_file(dataset_json_file, "dataset.json", "-djfile")
    for key in ("file_ending", "labels"):
        if key not in dataset_json:
            raise EvaluationInputError(f"{dataset_json_file} has no '{key}' entry; is it the dataset's dataset.json?")
    plans = _load_json_file(plans_file, "plans", "-pfile")
    file_ending = dataset_json["file_ending"]
    output_file = output_file if output_file is not None else join(pred_folder, "summary.json")
    _check_output_and_processes(output_file, num_processes)
    _check_tolerance(nsd_tolerance)
    files_ref, _ = pair_files(gt_folder, pred_folder, file_ending, chill=chill)
    rw = determine_reader_writer_from_dataset_json(dataset_json, files_ref[0])()
    label_manager = PlansManager(plans).get_label_manager(dataset_json)
    lm = label_manager
    regions_or_labels = lm.foreground_regions if lm.has_regions else lm.foreground_labels
    return compute_metrics_on_folder_with_surface(gt_folder, pred_folder, output_file, rw, file_ending,
                                                  regions_or_labels, label_manager.ignore_label, num_processes,
                                                  chill=chill, nsd_tolerance=nsd_tolerance)
