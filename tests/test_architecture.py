"""The package's layout as ``docs/architecture.md`` describes it: rooms, import direction, module sizes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnunetv2_mapo"
MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
# room -> the rooms of the package it may import from
ALLOWED = {"method": {"method"}, "training": {"method", "training", ""}}


def package_imports(relative: str) -> set[str]:
    """The ``nnunetv2_mapo`` modules imported by one module, at any depth (lazy imports count)."""
    tree = ast.parse((PACKAGE / relative).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunetv2_mapo"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("nnunetv2_mapo"))
    return names


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else ""


@pytest.mark.parametrize("relative", [m for m in MODULES if m.split("/")[0] in ALLOWED])
def test_imports_point_down(relative: str) -> None:
    own = relative.split("/")[0]
    wrong = {m for m in package_imports(relative) if room(m) not in ALLOWED[own]}
    if own == "training":  # the top level of the package offers only the version to the trainer
        wrong -= {"nnunetv2_mapo"}
    assert not wrong, f"{relative} imports {sorted(wrong)}"


def test_architecture_table_lists_every_module_and_no_other() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+(?:\.py)?/?)` \|", text, flags=re.M))
    files = {m for m in MODULES if not m.endswith("__init__.py") or m == "__init__.py"}
    folders = {f for f in listed if f.endswith("/")}
    assert {f for f in listed if not f.endswith("/")} | {m for m in files if any(m.startswith(d) for d in folders)} \
        == files
    for folder in folders:
        assert (PACKAGE / folder).is_dir(), folder


@pytest.mark.parametrize("relative", MODULES)
def test_no_module_over_400_lines(relative: str) -> None:
    assert len((PACKAGE / relative).read_text().splitlines()) <= 400, relative


def test_tests_mirror_the_rooms() -> None:
    for folder in ("method", "training", "evaluation", "benchmark", "commands"):
        sources = {p.stem for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__"}
        tests = {p.stem.removeprefix("test_") for p in (ROOT / "tests" / folder).glob("test_*.py")}
        assert sources - tests <= MIRROR_EXCEPTIONS.get(folder, set()), (folder, sorted(sources - tests))


# Modules tested through the tests of the module that drives them, not by a test module of their own.
MIRROR_EXCEPTIONS = {
    "training": {"preference_round"},  # test_trainer.py, test_trainer_e2e.py (rounds through the trainer)
    "benchmark": {"cli", "dataset", "results", "plots"},  # test_runner.py (input errors, the end-to-end run)
    "commands": {"workspace", "doctor", "evaluate", "demo", "predict"},  # e2e tests, test_cli.py,
    # evaluation/test_folder.py, inference/test_predictor.py
}
