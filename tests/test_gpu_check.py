"""``scripts/gpu_check.sh``: refuses clearly, before any work, where it cannot run (no dataset, no CUDA device)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_the_script_parses_and_refuses_a_missing_dataset(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2 and "no raw dataset at" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_stops_before_copying_anything(tmp_path: Path) -> None:
    dataset = tmp_path / "Dataset004_Hippocampus"
    dataset.mkdir()
    result = subprocess.run(["bash", str(SCRIPT), str(dataset)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "torch sees no CUDA device" in result.stderr


def test_a_bad_rehearsal_budget_is_refused_before_any_work(tmp_path: Path) -> None:
    dataset = tmp_path / "Dataset004_Hippocampus"
    dataset.mkdir()
    for name, value in (("GPU_CHECK_ITERATIONS", "abc"), ("GPU_CHECK_ROUND_CASES", "0")):
        result = subprocess.run(["bash", str(SCRIPT), str(dataset)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, name: value})
        assert result.returncode == 2 and f"got '{value}'" in result.stderr
