"""The arguments of ``nnunetv2_mapo benchmark`` and its entry point (imports the runner only when it runs)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from nnunetv2_mapo.benchmark.spec import (
    DEFAULT_MAPO_TRAINER,
    BenchmarkFailed,
    BenchmarkInputError,
    BenchmarkSpec,
    parse_settings,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``nnunetv2_mapo benchmark`` to ``parser``.

    Args:
        parser: The (sub-)parser.
    """
    parser.add_argument("-d", "--dataset", type=int, required=True, help="nnU-Net dataset id")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("-f", "--folds", type=int, nargs="+", default=[0], help="folds (default: 0)")
    parser.add_argument("--epochs", type=int, required=True,
                        help="epochs per trainer (after the shared warm-up, if any)")
    parser.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, required=True,
                        help="validation iterations per epoch (nnU-Net's pseudo Dice)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="repetitions (default 1); nnU-Net has no seed option: each is an independent training, "
                             "mapo_seed = index")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size override (plans variant nnUNetPlans_bs{B}, same preprocessed data)")
    parser.add_argument("--shared-warmup-epochs", type=int, default=0,
                        help="W: train W epochs once per seed and fold, then both trainers continue from that "
                             "checkpoint (MAPO with mapo_warmup_epochs = W); default 0")
    parser.add_argument("--single-warmup", action="store_true",
                        help="one shared warm-up per fold for all seeds (seed 0's) instead of one per seed: the seeds "
                             "repeat the comparison from the same start")
    parser.add_argument("--workdir", default="benchmark_runs",
                        help="workspace with nnUNet_raw/_preprocessed and benchmarks/ (default ./benchmark_runs)")
    parser.add_argument("--raw-source", default=None,
                        help="nnU-Net raw dataset folder copied into the workspace (never written to)")
    parser.add_argument("--settings", default=None,
                        help="JSON object or file with more nnUNet_mapo_config settings: mapo_* for the MAPO trainer, "
                             "initial_lr/weight_decay/oversample_foreground_percent for both")
    parser.add_argument("--mapo-trainer", default=DEFAULT_MAPO_TRAINER,
                        help="MAPO trainer class (default nnUNetTrainerMAPO)")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--save-every", type=int, default=5,
                        help="epochs between nnU-Net's checkpoint_latest.pth, where an interrupted training resumes "
                             "(default 5)")
    parser.add_argument("--name", default=None, help="sub-folder of WORKDIR/benchmarks (default: from the settings)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; rewrite the results from the finished trainings")
    parser.add_argument("--equal-compute", action="store_true",
                        help="also train nnUNetTrainer with MAPO's extra sample-passes (pair rows, rounds) as extra "
                             "iterations per epoch, so that a gain cannot be just more compute")
    parser.add_argument("--train-cases", type=int, default=None,
                        help="low-data protocol: train on N cases (fixed draw) and hold out all the others as the "
                             "test set, predicted by nnU-Net's final validation (fold 0; a workdir of its own)")
    parser.add_argument("--split-file", default=None,
                        help="the same with a given split: JSON {\"train\": [...], \"val\": [...]} or nnU-Net's "
                             "splits_final.json layout (its first fold)")
    parser.add_argument("--test-source", default=None, metavar="RAW_DATASET",
                        help="another nnU-Net raw dataset of the same task (channels, labels, file ending): every "
                             "trained network also predicts all its cases, scored and compared like the held-out "
                             "ones (a cross-domain test set; nothing is retrained, so it can be added later)")
    parser.add_argument("--group-pattern", default=None, metavar="REGEX",
                        help="with --train-cases or --split-file: the first group of REGEX, matched at the start of "
                             "a case identifier, names its group (video sequence, slide, patient); every group stays "
                             "on one side of the split (--train-cases then draws whole groups)")
    parser.add_argument("--unlabeled-cases", type=int, default=None, metavar="N",
                        help="semi-supervised protocol: N of the held-out cases lose their labels (their images become "
                             "the MAPO arm's mapo_unlabeled_folder, e.g. with --mapo-trainer "
                             "nnUNetTrainerMAPO_Unlabeled or nnUNetTrainerPseudoLabel); the others are the test set")


def spec_from_args(args: argparse.Namespace) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` of parsed arguments.

    Raises:
        BenchmarkInputError: Invalid ``--settings``.
    """
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return BenchmarkSpec(
        dataset_id=args.dataset, configuration=args.configuration, folds=tuple(args.folds), epochs=args.epochs,
        iterations=args.iterations, val_iterations=args.val_iterations, seeds=args.seeds, workdir=args.workdir,
        batch_size=args.batch_size, shared_warmup_epochs=args.shared_warmup_epochs,
        single_warmup=args.single_warmup, raw_source=args.raw_source,
        settings=parse_settings(args.settings), mapo_trainer=args.mapo_trainer, device=device,
        save_every=args.save_every, name=args.name, report_only=args.report_only, train_cases=args.train_cases,
        split_file=None if args.split_file is None else os.path.abspath(args.split_file),
        equal_compute=args.equal_compute, group_pattern=args.group_pattern, unlabeled_cases=args.unlabeled_cases,
        test_source=None if args.test_source is None else os.path.abspath(args.test_source))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``nnunetv2_mapo benchmark``.

    Args:
        args: Parsed :func:`add_arguments` arguments.

    Returns:
        0 on success, 2 for bad input, 1 when an nnU-Net command failed, 130 when interrupted.
    """
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM like Ctrl-C: stop the running nnUNetv2_train, keep what is on disk

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        previous = None
    from nnunetv2_mapo.benchmark.runner import run_benchmark

    try:
        run_benchmark(spec_from_args(args))
    except BenchmarkInputError as err:
        print(f"nnunetv2_mapo benchmark: error: {err}", file=sys.stderr)
        return 2
    except BenchmarkFailed as err:
        print(f"nnunetv2_mapo benchmark: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnnunetv2_mapo benchmark: interrupted. Run the same command again to continue (finished steps are "
              "skipped, unfinished trainings resume with --c).", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
