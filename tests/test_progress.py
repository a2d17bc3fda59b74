"""Tests of ``nnunetv2_mapo.progress``: the ``progress_mapo.png`` plot."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest

from nnunetv2_mapo.progress import PANELS, plot_mapo_progress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_KEYS = [key for _, keys in PANELS for key in keys]


def logged(epochs: int, nan_every: int = 0) -> dict:
    values = {}
    for i, key in enumerate(ALL_KEYS):
        series = [float(e + i) for e in range(epochs)]
        if nan_every:
            series = [math.nan if e % nan_every == 0 else v for e, v in enumerate(series)]
        values[key] = series
    return values


def test_panels_plot_keys_the_trainer_logs():
    from nnunetv2_mapo.trainer import EPOCH_LOG_KEYS  # otherwise the plot would never be written

    assert set(ALL_KEYS) <= set(EPOCH_LOG_KEYS)
    assert len(ALL_KEYS) == len(set(ALL_KEYS))


def test_writes_a_png_with_nan_values(tmp_path):
    data = logged(6, nan_every=2)
    data["mapo_regen_seconds"] = [math.nan] * 6  # a key that is NaN in every epoch
    path = plot_mapo_progress(data, str(tmp_path))
    assert path == str(tmp_path / "progress_mapo.png")
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_MAGIC
    assert plt.get_fignums() == []  # the figure is closed


def test_custom_filename_and_other_log_keys_ignored(tmp_path):
    data = logged(3) | {"train_losses": [1.0, 0.9, 0.8], "unrelated": "text"}
    path = plot_mapo_progress(data, str(tmp_path), filename="custom.png")
    assert path == str(tmp_path / "custom.png")
    assert (tmp_path / "custom.png").stat().st_size > 1000


def test_overwrites_each_epoch(tmp_path):
    first = plot_mapo_progress(logged(2), str(tmp_path))
    size = (tmp_path / "progress_mapo.png").stat().st_size
    second = plot_mapo_progress(logged(40), str(tmp_path))
    assert first == second
    assert (tmp_path / "progress_mapo.png").stat().st_size != size


def test_uneven_lengths_use_the_shortest(tmp_path):
    data = logged(5)
    data["mapo_num_pairs"] = data["mapo_num_pairs"][:2]  # e.g. just after resuming with padded logs
    assert plot_mapo_progress(data, str(tmp_path)) is not None


@pytest.mark.parametrize("data", [{}, {key: [] for key in ALL_KEYS}, logged(4) | {"mapo_dpo_loss": []},
                                  {k: v for k, v in logged(4).items() if k != "mapo_reward_margin"}])
def test_nothing_logged_gives_none(tmp_path, data):
    assert plot_mapo_progress(data, str(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []
