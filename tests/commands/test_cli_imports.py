"""Each ``nnunetv2_mapo`` command imports what it uses: building the parser imports neither torch nor nnU-Net's
trainer, and ``env`` (which shells ``eval``) starts fast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = (
    "import json, sys; from nnunetv2_mapo.commands.cli import build_parser; build_parser({argv}); "
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nnunetv2', 'monai'))))"
)


def loaded(argv: list[str] | None) -> list[str]:
    code = PROBE.format(argv=repr(argv))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


@pytest.mark.parametrize("argv", [None, ["env"], ["settings"], ["benchmark", "-d", "4"], ["evaluate"], ["demo"],
                                  ["round-cost"], ["doctor"]])
def test_parsers_import_no_torch_and_no_trainer(argv) -> None:
    modules = loaded(argv)
    assert "torch" not in modules
    assert not [m for m in modules if m.startswith(("nnunetv2.training", "monai"))]


def test_env_imports_nothing_of_nnunet() -> None:
    assert loaded(["env"]) == []
