"""``nnunetv2_mapo predict``: ``nnUNetv2_predict`` plus voxel-wise uncertainty maps.

Takes ``nnUNetv2_predict``'s arguments and writes the same segmentations (without map options and with one fold,
byte-identical), plus, per case, float32 maps in ``OUTPUT/uncertainty/`` (:mod:`nnunetv2_mapo.inference.predictor`):

- ``--mc-samples T`` (with ``--mc-dropout-rate``): ``<case>_entropy.nii.gz`` (predictive entropy of the mean of the
  T dropout passes, per fold) and ``<case>_mutual_information.nii.gz`` (their disagreement: the epistemic part);
- ``--fold-disagreement`` with several folds: ``<case>_fold_disagreement.nii.gz``.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_MC_DROPOUT_RATE = 0.1


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``nnUNetv2_predict``'s arguments (same names and defaults) and the uncertainty options."""
    parser.add_argument("-i", required=True, help="input folder (file names as nnU-Net expects: CASE_0000.nii.gz)")
    parser.add_argument("-o", required=True, help="output folder; maps go to its uncertainty/ sub-folder")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class of the model (default nnUNetTrainer)")
    parser.add_argument("-c", required=True, help="configuration")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding window step (default 0.5)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring (test-time augmentation)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--save_probabilities", action="store_true", help="also export probabilities (.npz)")
    parser.add_argument("--continue_prediction", action="store_true", help="do not overwrite existing predictions")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("-npp", type=int, default=_env_int("nnUNet_npp", 3), help="preprocessing processes")
    parser.add_argument("-nps", type=int, default=_env_int("nnUNet_nps", 3), help="export processes")
    parser.add_argument("-prev_stage_predictions", default=None, help="previous stage's predictions (cascade)")
    parser.add_argument("-num_parts", type=int, default=1)
    parser.add_argument("-part_id", type=int, default=0)
    parser.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"))
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.add_argument("--not_on_device", action="store_true")
    parser.add_argument("--mc-samples", type=int, default=0,
                        help="Monte-Carlo dropout passes per fold for entropy and mutual-information maps (default 0)")
    parser.add_argument("--mc-dropout-rate", type=float, default=DEFAULT_MC_DROPOUT_RATE,
                        help=f"rate of the dropout injected for those passes (default {DEFAULT_MC_DROPOUT_RATE})")
    parser.add_argument("--mc-seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    parser.add_argument("--fold-disagreement", action="store_true",
                        help="with several folds: a map of the folds' disagreement (mutual information)")


def run(args: argparse.Namespace) -> int:
    """Runs ``nnunetv2_mapo predict``; 2 for unusable arguments (before any image is read)."""
    if args.part_id >= args.num_parts:
        print("nnunetv2_mapo predict: error: -part_id must be smaller than -num_parts.", file=sys.stderr)
        return 2
    import torch
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunetv2_mapo.inference.predictor import UncertaintyInputError, UncertaintyPredictor

    folds = [f if f == "all" else int(f) for f in args.f]
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        predictor = UncertaintyPredictor(
            tile_step_size=args.step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
            perform_everything_on_device=not args.not_on_device, device=torch.device(args.device),
            verbose=args.verbose, verbose_preprocessing=args.verbose, allow_tqdm=not args.disable_progress_bar,
            mc_samples=args.mc_samples, dropout_rate=args.mc_dropout_rate,
            fold_disagreement=args.fold_disagreement, seed=args.mc_seed)
        predictor.initialize_from_trained_model_folder(get_output_folder(args.d, args.tr, args.p, args.c), folds,
                                                       checkpoint_name=args.chk)
    except UncertaintyInputError as err:
        print(f"nnunetv2_mapo predict: error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.o, exist_ok=True)
    # nnU-Net's sequential mode (-npp 0 -nps 0) predicts the same files with worker processes of one each here.
    predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                 overwrite=not args.continue_prediction,
                                 num_processes_preprocessing=max(1, args.npp),
                                 num_processes_segmentation_export=max(1, args.nps),
                                 folder_with_segs_from_prev_stage=args.prev_stage_predictions,
                                 num_parts=args.num_parts, part_id=args.part_id)
    return 0
