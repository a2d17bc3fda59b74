"""How nnU-Net finds ``nnUNetTrainerMAPO``: the ``nnUNet_extTrainer`` folder and its checks.

nnU-Net 2.8 resolves ``-tr NAME`` (training) and the checkpoint's ``trainer_name`` (prediction) by importing every
module of its own trainer tree, then of each folder listed in ``nnUNet_extTrainer``. It imports those modules as
top-level modules and removes them from ``sys.modules`` afterwards, so the folder we list holds one shim module
with a unique name that re-exports the installed classes through absolute imports.

This module imports only the standard library: it runs at every Python start-up through ``nnunetv2_mapo.pth``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNETV2_MAPO_NO_AUTOREGISTER"
PTH_NAME = "nnunetv2_mapo.pth"
# The value the shell gave us, before this package registered itself in this process.
_SHELL_VALUE = os.environ.get(ENV_VAR)


def shell_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) with ``nnUNet_extTrainer`` as the shell set it.

    In this process the package may have added its folder to the variable on import; a child process that should
    see what a fresh ``nnUNetv2_train`` sees needs the shell's value instead.
    """
    result = dict(os.environ if environ is None else environ)
    if _SHELL_VALUE is None:
        result.pop(ENV_VAR, None)
    else:
        result[ENV_VAR] = _SHELL_VALUE
    return result


def trainer_folder() -> str:
    """Returns the folder to list in ``nnUNet_extTrainer`` (it holds the shim module only)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_trainer_discovery")


def is_registered(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether ``nnUNet_extTrainer`` in ``environ`` (default ``os.environ``) lists the MAPO trainer folder."""
    environ = os.environ if environ is None else environ
    folder = os.path.normcase(trainer_folder())
    listed = [os.path.normcase(os.path.abspath(p)) for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return folder in listed


def register(environ: MutableMapping[str, str] | None = None) -> bool:
    """Appends the MAPO trainer folder to ``nnUNet_extTrainer``, keeping whatever the user listed before it.

    nnU-Net reads the variable at lookup time, so registering inside a running process works, and child processes
    (``nnUNetv2_train -num_gpus N`` workers, export pools) inherit it.

    Args:
        environ: The environment to change; defaults to ``os.environ``.

    Returns:
        True if the variable was changed, False if the folder was already listed.
    """
    environ = os.environ if environ is None else environ
    if is_registered(environ):
        return False
    current = environ.get(ENV_VAR, "")
    environ[ENV_VAR] = trainer_folder() if not current.strip() else current + os.pathsep + trainer_folder()
    return True


def autoregister() -> None:
    """Registers unless the user opted out with ``NNUNETV2_MAPO_NO_AUTOREGISTER=1``."""
    if not os.environ.get(OPT_OUT_VAR):
        register()


def startup_hook_installed() -> bool:
    """Whether ``nnunetv2_mapo.pth`` sits in a site-packages folder on ``sys.path`` (a regular ``pip install``)."""
    return any(os.path.isfile(os.path.join(entry, PTH_NAME)) for entry in sys.path if entry and os.path.isdir(entry))


def env_lines() -> list[str]:
    """Shell lines a user must ``eval`` so that nnU-Net's commands find the MAPO trainers; empty if none are needed.

    None are needed when the start-up hook is installed (a regular ``pip install``) or when the shell that started
    this process already lists the folder.
    """
    if startup_hook_installed() and not os.environ.get(OPT_OUT_VAR):
        return []
    if is_registered({ENV_VAR: _SHELL_VALUE or ""}):
        return []
    keep_existing = "${" + ENV_VAR + ":+$" + ENV_VAR + os.pathsep + "}"
    return [f'export {ENV_VAR}="{keep_existing}{trainer_folder()}"']
