"""The peak GPU memory line: written on CUDA only, read back as the largest of a fold's logs."""

from __future__ import annotations

import torch

from nnunetv2_mapo.training.gpu_memory import PREFIX, peak_gpu_memory_line, read_peak_gpu_memory


def test_line_on_cuda_only_and_read_back_as_the_largest(tmp_path, monkeypatch) -> None:
    assert peak_gpu_memory_line(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30 + 5)
    line = peak_gpu_memory_line(torch.device("cuda", 0))
    assert line == f"{PREFIX}{3 * 2**30 + 5} bytes"

    assert read_peak_gpu_memory(str(tmp_path)) is None  # no log yet
    (tmp_path / "training_log_2026_1_1_00_00_00.txt").write_text(f"Epoch 3\n2026-01-01 00:01:00.0: {line}\n")
    (tmp_path / "training_log_2026_1_1_01_00_00.txt").write_text(  # the resumed invocation peaked lower
        f"2026-01-01 01:01:00.0: {PREFIX}1024 bytes\nMAPO: dpo_loss 0.69\n")
    (tmp_path / "other.txt").write_text(f"{PREFIX}99999999999999 bytes\n")  # not a training log
    assert read_peak_gpu_memory(str(tmp_path)) == 3 * 2**30 + 5
