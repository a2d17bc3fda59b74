"""``nnunetv2_mapo evaluate``: ``nnUNetv2_evaluate_folder``'s arguments and output, plus HD95, ASD and NSD."""

from __future__ import annotations

import argparse
import os
import sys

from nnunetv2.configuration import default_num_processes  # light: nnU-Net's environment defaults only

from nnunetv2_mapo.evaluation.surface import DEFAULT_NSD_TOLERANCE_MM


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``nnUNetv2_evaluate_folder`` to ``parser`` (same names and defaults).

    Args:
        parser: The (sub)parser of ``nnunetv2_mapo evaluate``.
    """
    parser.add_argument("gt_folder", type=str, help="folder with the reference (ground truth) segmentations")
    parser.add_argument("pred_folder", type=str, help="folder with the predicted segmentations (same file names)")
    parser.add_argument("-djfile", type=str, required=True, help="dataset.json of the dataset")
    parser.add_argument("-pfile", type=str, required=True, help="plans.json used for the predictions")
    parser.add_argument("-o", type=str, default=None, help="output summary .json. Default: pred_folder/summary.json")
    parser.add_argument(
        "-np",
        type=int,
        default=default_num_processes,
        help=f"number of worker processes. Default: {default_num_processes}",
    )
    parser.add_argument(
        "--chill",
        action="store_true",
        help="do not fail if pred_folder lacks some of the cases in gt_folder (evaluate only the predicted ones)",
    )
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM,
                        help=f"tolerance of the normalised surface Dice, in mm (default {DEFAULT_NSD_TOLERANCE_MM}; "
                             f"docs/evaluation.md says why)")


def run(args: argparse.Namespace) -> int:
    """Runs ``nnunetv2_mapo evaluate`` (arguments from :func:`add_arguments`).

    Args:
        args: Parsed arguments: ``gt_folder``, ``pred_folder``, ``djfile``, ``pfile``, ``o``, ``np``, ``chill``.

    Returns:
        0 on success, 2 for unusable input (the reason is printed to stderr).

    Raises:
        ValueError: If a reference/prediction pair differs in shape or spacing (found while evaluating).
    """
    from nnunetv2_mapo.evaluation.folder import EvaluationInputError, evaluate_folder

    output_file = args.o if args.o is not None else os.path.join(args.pred_folder, "summary.json")
    try:
        summary = evaluate_folder(args.gt_folder, args.pred_folder, args.djfile, args.pfile, output_file, args.np,
                                  args.chill, args.nsd_tolerance)
    except EvaluationInputError as exc:
        print(f"nnunetv2_mapo evaluate: error: {exc}", file=sys.stderr)
        return 2

    print(f"Evaluated {len(summary['metric_per_case'])} case(s); summary written to {output_file}")
    rows = [(str(k), v) for k, v in summary["mean"].items()] + [("foreground mean", summary["foreground_mean"])]
    for name, values in rows:
        print(
            f"  {name}: Dice {values['Dice']:.4f}  HD95 {values['HD95']:.4f}  ASD {values['ASD']:.4f}  "
            f"NSD@{args.nsd_tolerance:g}mm {values['NSD']:.4f}"
            f"  (distances from {values['n_surface_evaluated']} case(s); ref empty/pred not: "
            f"{values['n_ref_empty_pred_nonempty']}, pred empty/ref not: {values['n_pred_empty_ref_nonempty']}, "
            f"both empty: {values['n_both_empty']})"
        )
    return 0
