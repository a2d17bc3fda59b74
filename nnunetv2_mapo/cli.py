"""The ``nnunetv2_mapo`` command: ``env``, ``doctor``, ``settings``, ``evaluate``, ``demo``, ``benchmark``,
``round-cost``."""

from __future__ import annotations

import argparse
import sys

from nnunetv2_mapo import __version__, discovery


def _env(args: argparse.Namespace) -> int:
    for line in discovery.env_lines():
        print(line)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from nnunetv2_mapo.doctor import report, run_checks

    checks = run_checks(include_paths=not args.skip_paths)
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1


def _settings(args: argparse.Namespace) -> int:
    from nnunetv2_mapo.config import markdown_table

    print(markdown_table())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from nnunetv2_mapo.evaluation import run_evaluate

    return run_evaluate(args)


def _demo(args: argparse.Namespace) -> int:
    from nnunetv2_mapo.demo import run_demo

    run_demo(args.workdir, args.dataset, args.device, args.shared_data)
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from nnunetv2_mapo.benchmark import run_benchmark_from_args

    return run_benchmark_from_args(args)


def _round_cost(args: argparse.Namespace) -> int:
    from nnunetv2_mapo.round_cost import run_round_cost_from_args

    return run_round_cost_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nnunetv2_mapo``."""
    parser = argparse.ArgumentParser(prog="nnunetv2_mapo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nnunetv2_mapo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("env", help="print the shell lines to eval so that nnU-Net finds the MAPO trainers "
                               "(nothing when none are needed)").set_defaults(func=_env)

    doctor = sub.add_parser("doctor", help="check that nnU-Net finds and can run nnUNetTrainerMAPO")
    doctor.add_argument("--skip-paths", action="store_true", help="do not check nnUNet_raw/_preprocessed/_results")
    doctor.set_defaults(func=_doctor)

    sub.add_parser("settings", help="list every setting with default and allowed range").set_defaults(func=_settings)

    from nnunetv2_mapo.evaluation import add_evaluate_arguments

    evaluate = sub.add_parser("evaluate", help="nnUNetv2_evaluate_folder plus HD95 and ASD in mm")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)

    demo = sub.add_parser("demo", help="plan, train MAPO briefly, predict and evaluate on a small dataset")
    demo.add_argument("--workdir", default="demo_run", help="output folder (default: ./demo_run)")
    demo.add_argument("--dataset", choices=("synthetic", "hippocampus"), default="synthetic")
    demo.add_argument("--shared-data", default=None, help="raw Dataset004_Hippocampus folder for --dataset "
                                                          "hippocampus (default ../shared/data/...)")
    demo.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    demo.set_defaults(func=_demo)

    from nnunetv2_mapo.benchmark import add_benchmark_arguments

    benchmark = sub.add_parser("benchmark", help="nnUNetTrainer vs nnUNetTrainerMAPO: same split and budget")
    add_benchmark_arguments(benchmark)
    benchmark.set_defaults(func=_benchmark)

    from nnunetv2_mapo.round_cost import add_round_cost_arguments

    round_cost = sub.add_parser("round-cost", help="time preference rounds against cases and patch size")
    add_round_cost_arguments(round_cost)
    round_cost.set_defaults(func=_round_cost)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
