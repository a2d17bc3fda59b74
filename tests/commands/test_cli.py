"""The nnunetv2_mapo console script: settings, env, doctor, evaluate errors."""

from __future__ import annotations

import os
import subprocess
import sys

from nnunetv2_mapo.commands.cli import build_parser, main
from nnunetv2_mapo.training.settings import markdown_table


def test_settings_prints_the_table(capsys) -> None:
    assert main(["settings"]) == 0
    assert capsys.readouterr().out.strip() == markdown_table()


def test_env_prints_nothing_when_the_startup_hook_is_installed(capsys) -> None:
    assert main(["env"]) == 0
    assert capsys.readouterr().out == ""


def test_doctor_reports_a_bad_config_and_exit_code() -> None:
    env = {**os.environ, "nnUNet_mapo_config": '{"mapo_bta": 1}'}
    result = subprocess.run([sys.executable, "-m", "nnunetv2_mapo.commands.cli", "doctor", "--skip-paths"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    assert "[FAIL] nnUNet_mapo_config" in result.stdout and "mapo_beta" in result.stdout
    assert "[ok] nnUNetv2_train/-predict find nnUNetTrainerMAPO" in result.stdout


def test_evaluate_reports_missing_folder(tmp_path, capsys) -> None:
    code = main(["evaluate", str(tmp_path / "missing"), str(tmp_path), "-djfile", str(tmp_path / "d.json"),
                 "-pfile", str(tmp_path / "p.json")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_parser_has_every_subcommand() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"env", "doctor", "settings", "evaluate", "demo", "benchmark"} <= set(sub.choices)
