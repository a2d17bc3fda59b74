"""``nnunetv2_mapo doctor``: checks that nnU-Net will find and run the MAPO trainer, and says how to fix what fails."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass

from nnunetv2_mapo import discovery
from nnunetv2_mapo.training.settings import ENV_VAR, MAPOConfigError, config_from_environment

_LOOKUP_SNIPPET = (
    "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
    "c = f('nnUNetTrainerMAPO'); print(c.__module__)"
)


@dataclass
class Check:
    """One line of the report: what was checked, whether it passed, and the fix when it did not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _check_versions() -> Check:
    try:
        from importlib.metadata import version

        nnunet = version("nnunetv2")
    except Exception as err:  # noqa: BLE001 - any failure here means nnU-Net is not usable
        return Check("nnunetv2 installed", False, str(err), "pip install 'nnunetv2>=2.8,<2.9'")
    major_minor = tuple(int(p) for p in nnunet.split(".")[:2])
    ok = major_minor == (2, 8)
    return Check("nnunetv2 version", ok, nnunet, "" if ok else "pip install 'nnunetv2>=2.8,<2.9'")


def _check_lookup() -> Check:
    """Runs nnU-Net's own trainer lookup in a child process with this shell's environment (as nnUNetv2_train does)."""
    environ = discovery.shell_environment()
    result = subprocess.run([sys.executable, "-c", _LOOKUP_SNIPPET], capture_output=True, text=True, env=environ,
                            timeout=300)
    if result.returncode == 0 and "nnunetv2_mapo" in result.stdout:
        return Check("nnUNetv2_train/-predict find nnUNetTrainerMAPO", True, result.stdout.strip().splitlines()[-1])
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    fix = "; ".join(discovery.env_lines()) or "reinstall: pip install --force-reinstall --no-deps nnunetv2_mapo"
    if "torchvision" in result.stderr:
        fix = ("nnU-Net's trainer lookup imports timm, which imports torchvision, which fails with this torch build. "
               "Install the torchvision release that matches your torch (same CUDA/CPU variant).")
    return Check("nnUNetv2_train/-predict find nnUNetTrainerMAPO", False, tail[0], fix)


def _check_paths() -> list[Check]:
    checks = []
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(name)
        ok = bool(value) and os.path.isdir(value)
        checks.append(Check(f"{name}", ok, value or "not set",
                            "" if ok else f"export {name}=/path/to/folder (see nnU-Net's setting_up_paths.md)"))
    return checks


def _check_config() -> Check:
    try:
        overrides = config_from_environment()
    except MAPOConfigError as err:
        return Check(ENV_VAR, False, str(err), f"fix or unset {ENV_VAR}")
    return Check(ENV_VAR, True, f"{len(overrides)} override(s)" if overrides else "not set (defaults)")


def run_checks(include_paths: bool = True) -> list[Check]:
    """Runs every check and returns the results in report order."""
    checks = [_check_versions(), _check_lookup(), _check_config()]
    if include_paths:
        checks.extend(_check_paths())
    return checks


def report(checks: list[Check]) -> str:
    """Formats the checks for the terminal."""
    lines = []
    for check in checks:
        lines.append(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"       fix: {check.fix}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``nnunetv2_mapo doctor``."""
    parser.add_argument("--skip-paths", action="store_true", help="do not check nnUNet_raw/_preprocessed/_results")


def run(args: argparse.Namespace) -> int:
    """Runs ``nnunetv2_mapo doctor``: 0 when every check passes, else 1."""
    checks = run_checks(include_paths=not args.skip_paths)
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1
