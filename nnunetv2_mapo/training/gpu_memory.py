"""The peak GPU memory of a training, as one line in nnU-Net's log: written when a training ends, read back by the
benchmark (which measures CPU memory itself, but cannot see inside the training process's CUDA allocator)."""

from __future__ import annotations

import glob
import os
import re

import torch

PREFIX = "Peak GPU memory allocated (torch.cuda.max_memory_allocated): "
_LINE = re.compile(re.escape(PREFIX) + r"(\d+) bytes")


def peak_gpu_memory_line(device: torch.device) -> str | None:
    """The line to log for a training on ``device``; None off CUDA (nothing to report)."""
    if device.type != "cuda":
        return None
    return f"{PREFIX}{torch.cuda.max_memory_allocated(device)} bytes"


def read_peak_gpu_memory(fold_folder: str) -> int | None:
    """The largest peak of all ``training_log_*.txt`` files of a fold folder (one per invocation, so a resumed
    training reports its largest), in bytes; None when no training there logged one."""
    peaks = []
    for path in glob.glob(os.path.join(fold_folder, "training_log_*.txt")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            peaks += [int(match.group(1)) for match in _LINE.finditer(handle.read())]
    return max(peaks) if peaks else None
