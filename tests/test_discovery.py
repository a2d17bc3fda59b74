"""Trainer discovery: nnU-Net's own lookup finds the installed MAPO classes; env lines and registration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nnunetv2_mapo import discovery

LOOKUP = (
    "import sys; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find; "
    "import nnunetv2_mapo as installed; "
    "classes = [find(name) for name in sys.argv[1:]]; "
    "print([c.__module__ for c in classes]); "
    "assert all(c is getattr(installed, c.__name__) for c in classes)"
)


def _lookup(environ: dict, *names: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOOKUP, *names], capture_output=True, text=True, env=environ,
                          timeout=300)


def test_nnunet_lookup_finds_installed_classes_with_no_extra_step() -> None:
    environ = {k: v for k, v in os.environ.items() if k != discovery.ENV_VAR}
    result = _lookup(environ, "nnUNetTrainerMAPO", "nnUNetTrainerMAPO_NoWarmup")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "['nnunetv2_mapo.training.trainer', 'nnunetv2_mapo.training.variants.schedule']" in result.stdout


def test_opt_out_then_env_lines_restore_the_lookup() -> None:
    environ = {k: v for k, v in os.environ.items() if k != discovery.ENV_VAR}
    environ[discovery.OPT_OUT_VAR] = "1"
    assert _lookup(environ, "nnUNetTrainerMAPO").returncode != 0  # nnU-Net alone does not know the trainer

    printed = subprocess.run([sys.executable, "-m", "nnunetv2_mapo.commands.cli", "env"], capture_output=True,
                             text=True, env=environ, timeout=120).stdout.strip()
    assert printed.startswith(f"export {discovery.ENV_VAR}=")
    shell = subprocess.run(["bash", "-c", f'{printed}; echo "${discovery.ENV_VAR}"'], capture_output=True,
                           text=True, env={**environ, discovery.ENV_VAR: "/some/other/folder"})
    assert shell.stdout.strip() == "/some/other/folder" + os.pathsep + discovery.trainer_folder()
    environ[discovery.ENV_VAR] = discovery.trainer_folder()
    assert _lookup(environ, "nnUNetTrainerMAPO").returncode == 0


def test_register_keeps_user_folders_and_is_idempotent() -> None:
    environ = {discovery.ENV_VAR: "/mine"}
    assert discovery.register(environ) is True
    assert environ[discovery.ENV_VAR] == "/mine" + os.pathsep + discovery.trainer_folder()
    assert discovery.register(environ) is False
    assert discovery.is_registered(environ)
    empty: dict = {}
    discovery.register(empty)
    assert empty[discovery.ENV_VAR] == discovery.trainer_folder()


def test_trainer_folder_holds_only_the_shim() -> None:
    files = sorted(f for f in os.listdir(discovery.trainer_folder()) if f.endswith(".py"))
    assert files == ["nnunetv2_mapo_trainers.py"]
    assert not os.path.exists(os.path.join(discovery.trainer_folder(), "__init__.py"))


@pytest.mark.parametrize("name", ["nnUNetTrainerMAPO", "nnUNetTrainerMAPO_ChannelDropout"])
def test_lazy_package_attributes(name: str) -> None:
    import nnunetv2_mapo

    assert getattr(nnunetv2_mapo, name).__name__ == name
    with pytest.raises(AttributeError):
        nnunetv2_mapo.DoesNotExist  # noqa: B018


@pytest.mark.parametrize("shell_value", [None, "/user/trainers"])
def test_shell_environment_restores_the_shells_value(monkeypatch, shell_value) -> None:
    monkeypatch.setattr(discovery, "_SHELL_VALUE", shell_value)
    current = {discovery.ENV_VAR: "/user/trainers:/site/nnunetv2_mapo/_trainer_discovery", "OTHER": "1"}
    environ = discovery.shell_environment(current)
    assert environ.get(discovery.ENV_VAR) == shell_value and environ["OTHER"] == "1"
    assert current[discovery.ENV_VAR].endswith("_trainer_discovery")  # a copy: the input is untouched
