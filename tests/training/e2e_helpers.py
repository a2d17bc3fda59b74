"""Shared by the end-to-end tests that stop a training mid-way: waiting for a line in nnU-Net's training log."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_log(fold: str, needle: str, process: subprocess.Popen, timeout: float = 600) -> None:
    """Returns once ``needle`` is in the fold's newest ``training_log_*.txt``.

    Raises:
        AssertionError: The training ended first, or ``timeout`` seconds passed.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended before '{needle}' appeared")
        logs = sorted(Path(fold).glob("training_log_*.txt"))
        if logs and needle in logs[-1].read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"'{needle}' did not appear within {timeout} s")
