"""The ``nnunetv2_mapo`` command: ``env``, ``doctor``, ``settings``, ``evaluate``, ``demo``, ``benchmark``,
``benchmark-compare``, ``round-cost``, ``convert-ph2``, ``predict``.

Each sub-command lives in a module with ``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the
command being run is imported (``nnunetv2_mapo env``, which shells ``eval``, imports neither torch nor nnU-Net).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nnunetv2_mapo import __version__, discovery

# name -> (module with add_arguments and run, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "env": ("nnunetv2_mapo.commands.cli", "print the shell lines to eval so that nnU-Net finds the MAPO trainers "
                                          "(nothing when none are needed)"),
    "doctor": ("nnunetv2_mapo.commands.doctor", "check that nnU-Net finds and can run nnUNetTrainerMAPO"),
    "settings": ("nnunetv2_mapo.commands.cli", "list every setting with default and allowed range"),
    "evaluate": ("nnunetv2_mapo.commands.evaluate", "nnUNetv2_evaluate_folder plus HD95 and ASD in mm and NSD"),
    "predict": ("nnunetv2_mapo.commands.predict", "nnUNetv2_predict plus uncertainty maps (Monte-Carlo dropout, "
                                                  "fold disagreement)"),
    "demo": ("nnunetv2_mapo.commands.demo", "plan, train MAPO briefly, predict and evaluate on a small dataset"),
    "benchmark": ("nnunetv2_mapo.benchmark.cli", "nnUNetTrainer vs nnUNetTrainerMAPO: same split and budget"),
    "benchmark-compare": ("nnunetv2_mapo.benchmark.compare", "the benchmarks of several MAPO variants in one table"),
    "round-cost": ("nnunetv2_mapo.commands.round_cost", "time preference rounds against cases and patch size"),
    "convert-ph2": ("nnunetv2_mapo.commands.convert_ph2", "write the PH2 dermoscopy database as nnU-Net's "
                                                          "Dataset501_PH2"),
}


def _run_env(args: argparse.Namespace) -> int:
    for line in discovery.env_lines():
        print(line)
    return 0


def _run_settings(args: argparse.Namespace) -> int:
    from nnunetv2_mapo.training.settings import markdown_table

    print(markdown_table())
    return 0


_INLINE = {"env": _run_env, "settings": _run_settings}


def _attach(parser: argparse.ArgumentParser, name: str) -> None:
    if name in _INLINE:
        parser.set_defaults(func=_INLINE[name])
        return
    module = importlib.import_module(COMMANDS[name][0])
    module.add_arguments(parser)
    parser.set_defaults(func=module.run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``nnunetv2_mapo``.

    Args:
        argv: The arguments about to be parsed: only the module of the command they name is imported. None builds
            every command's arguments.
    """
    parser = argparse.ArgumentParser(prog="nnunetv2_mapo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"nnunetv2_mapo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if argv is None or name == chosen:
            _attach(command, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
