"""Fixtures of the method tests."""

from __future__ import annotations

import pytest
from round_helpers import generate, label_batches, tiny_unet


@pytest.fixture(scope="module")
def label_round():
    """A tiny U-Net, batches it nearly solves, and the preference set of one round over them (round 3, epoch 17)."""
    network = tiny_unet()
    batches = label_batches(network)
    result = generate(network, batches, round_index=3, epoch=17)
    return network, batches, result
