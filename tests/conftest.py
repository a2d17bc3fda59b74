"""Shared pytest fixtures. Each block names its owner; add new fixtures below the existing blocks."""

from __future__ import annotations

from pathlib import Path

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


# ------------------------------------------------------------------------------- scheduling (make test: -n 2)
# Test modules by their running time on a 2-core CPU, slowest first. pytest-xdist's loadfile scheduling hands out
# modules in collection order, so starting the longest ones first lets both workers finish at about the same time.
TESTS = Path(__file__).resolve().parent
SLOWEST_FIRST = (
    "training/test_trainer_e2e.py",
    "inference/test_predictor.py",
    "training/test_networks_e2e.py",
    "training/test_dataset_kinds_e2e.py",
    "benchmark/test_runner.py",
    "training/test_trainer.py",
    "training/test_distributed.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOWEST_FIRST)}

    def module_rank(item: pytest.Item) -> int:
        return rank.get(item.path.relative_to(TESTS).as_posix(), len(rank))

    items.sort(key=module_rank)  # stable: the order within a module and among the others is kept
