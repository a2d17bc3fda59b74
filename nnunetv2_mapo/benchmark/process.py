"""Running ``nnUNetv2_train`` with its wall time and peak memory, and the record of its invocations."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nnunetv2_mapo.training.checkpointing import atomic_path

RUN_RECORD = "benchmark_run.json"


@dataclass
class Invocation:
    """One ``nnUNetv2_train`` process: what ran, how long, how much memory."""

    command: list[str]
    started: str
    wall_seconds: float
    max_rss_bytes: int | None
    returncode: int | None
    interrupted: bool = False


# Runs the command as its child and reports that child's exit code and ru_maxrss (from os.wait4) as JSON to the file
# given first. Why a launcher: on Linux a new process's ru_maxrss starts at the peak RSS of the process it was forked
# (or vforked) from, so a child started directly from this process (torch imported: hundreds of MiB) would report
# at least that much. This interpreter (-S, standard library only) is a few MiB; its child inherits only that.
# Signals reach the command through its process group (run_process); the launcher ignores them so that it can
# still report, and gives the command default handlers (a shell may have started us with SIGINT ignored).
_LAUNCHER = """
import json, os, signal, sys
report, command = sys.argv[1], sys.argv[2:]
for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as handle:
    json.dump({"returncode": code, "ru_maxrss": usage.ru_maxrss}, handle)
sys.exit(min(max(code, 0), 255) if code >= 0 else 128 - code)
"""


def _stop_group(process: subprocess.Popen) -> None:
    """SIGINT, SIGTERM, SIGKILL to the process group of ``process`` (a session leader) until the launcher ends."""
    for number, grace in ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, number)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        break
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers the command left behind
        os.killpg(process.pid, signal.SIGKILL)


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports KiB, macOS bytes.
    return int(ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def run_process(command: Sequence[str], env: Mapping[str, str], log_file: str,
                on_line: Callable[[str], None] | None = None, poll_seconds: float = 1.0) -> Invocation:
    """Runs a command with its output appended to ``log_file``; measures wall time and peak memory.

    The command runs under a tiny launcher (started with :class:`subprocess.Popen`) that forks it, reaps it with
    ``os.wait4`` and reports its exit code and ``ru_maxrss``: the peak resident set size of that process, or of its
    largest waited-for child if larger (Linux), and nothing of other processes of the benchmark. The launcher starts
    a new session (process group). On Ctrl-C (or SIGTERM, see :func:`nnunetv2_mapo.benchmark.cli.run`) the group gets
    SIGINT, then SIGTERM after 20 s and SIGKILL after 10 more (so no worker outlives the benchmark), the invocation
    is recorded as interrupted and KeyboardInterrupt is raised again.

    Args:
        command: The command.
        env: Its environment.
        log_file: Output file (appended).
        on_line: Called with each new output line while the command runs (progress).
        poll_seconds: How often the output is read.

    Returns:
        The :class:`Invocation` (``returncode`` as :attr:`subprocess.Popen.returncode`: negative for a signal).

    Raises:
        KeyboardInterrupt: The user interrupted; the command has been stopped.
    """
    started_at = datetime.datetime.now().isoformat(timespec="seconds")
    started = time.monotonic()
    report = f"{log_file}.rusage.json"
    with contextlib.suppress(FileNotFoundError):
        os.remove(report)
    with open(log_file, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        offset = log.tell()
        process = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, report, *command], env=dict(env),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    pending = ""

    def read_new() -> None:
        nonlocal offset, pending
        if on_line is None:
            return
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        offset += len(chunk)
        pending += chunk.decode("utf-8", errors="replace")
        *complete, pending = pending.split("\n")
        for line in complete:
            on_line(line)

    interrupted = False
    try:
        while process.poll() is None:
            time.sleep(poll_seconds)
            read_new()
    except KeyboardInterrupt:
        interrupted = True
        _stop_group(process)
    read_new()
    returncode, max_rss = process.returncode, None
    if os.path.isfile(report):
        with open(report, encoding="utf-8") as handle:
            usage = json.load(handle)
        os.remove(report)
        returncode, max_rss = usage["returncode"], _maxrss_bytes(usage["ru_maxrss"])
    invocation = Invocation(list(command), started_at, time.monotonic() - started, max_rss, returncode, interrupted)
    if interrupted:
        raise _Interrupted(invocation)
    return invocation


class _Interrupted(KeyboardInterrupt):
    def __init__(self, invocation: Invocation) -> None:
        super().__init__("interrupted")
        self.invocation = invocation


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, allow_nan=True)


def _record_invocation(fold_folder: str, trainer: str, invocation: Invocation) -> None:
    path = os.path.join(fold_folder, RUN_RECORD)
    record = _read_json(path) if os.path.isfile(path) else {"trainer": trainer, "invocations": []}
    record["invocations"].append(asdict(invocation))
    _write_json(path, record)


def _invocation_totals(fold_folder: str) -> tuple[float | None, int | None, int]:
    path = os.path.join(fold_folder, RUN_RECORD)
    if not os.path.isfile(path):
        return None, None, 0
    invocations = _read_json(path)["invocations"]
    wall = float(sum(i["wall_seconds"] for i in invocations))
    rss = [i["max_rss_bytes"] for i in invocations if i.get("max_rss_bytes") is not None]
    return wall, (max(rss) if rss else None), len(invocations)


def train_command(dataset_id: int, configuration: str, fold: int, trainer: str, plans: str, device: str) -> list[str]:
    """The ``nnUNetv2_train`` command line of one training (always ``--c``: resume whatever is on disk)."""
    from nnunetv2_mapo.commands.workspace import nnunet_command

    return [nnunet_command("nnUNetv2_train"), str(dataset_id), configuration, str(fold), "-tr", trainer, "-p", plans,
            "-device", device, "--c"]
