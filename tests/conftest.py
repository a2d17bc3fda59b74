"""Shared pytest fixtures. Each block names its owner; add new fixtures below the existing blocks."""

from __future__ import annotations

import pytest
import torch


# ------------------------------------------------------------------------------------------------ unit tests
@pytest.fixture(scope="module")
def mapo_single_thread():
    """One intra-op thread for the tiny CPU networks of the unit tests, restored after the module.

    Tiny tensors gain nothing from a second thread, and on a busy 2-core machine OpenMP's spin-waiting made the
    same unit tests take several times longer. Use with ``pytestmark = pytest.mark.usefixtures("mapo_single_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
