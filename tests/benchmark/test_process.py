"""Tests of ``nnunetv2_mapo.benchmark.process``: peak memory, interruption."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from nnunetv2_mapo.benchmark.process import run_process


def test_run_process_measures_this_childs_peak_memory(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    lines: list[str] = []
    code = "import sys; block = b'x' * (300 * 2**20); print('allocated', flush=True); sys.exit(3)"
    invocation = run_process([sys.executable, "-c", code], dict(os.environ), str(log), lines.append, 0.05)
    assert invocation.returncode == 3 and not invocation.interrupted
    assert invocation.max_rss_bytes is not None and invocation.max_rss_bytes >= 300 * 2**20
    assert "allocated" in lines and "allocated" in log.read_text()
    small = run_process([sys.executable, "-c", "pass"], dict(os.environ), str(log), None, 0.05)
    assert small.returncode == 0 and small.max_rss_bytes < 300 * 2**20, "the previous child must not count"


def test_run_process_stops_the_command_on_interrupt(tmp_path: Path) -> None:
    code = "import time; print('ready', flush=True); time.sleep(120)"

    def interrupt_when_ready(line: str) -> None:
        if line == "ready":
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        run_process([sys.executable, "-c", code], dict(os.environ), str(tmp_path / "log"), interrupt_when_ready, 0.05)
    assert time.monotonic() - started < 20, "SIGINT must stop the command (the launcher resets its handler)"
    invocation = info.value.invocation
    assert invocation.interrupted and invocation.returncode != 0
