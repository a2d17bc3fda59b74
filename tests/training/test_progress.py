"""Tests of ``nnunetv2_mapo.training.progress``: the ``progress_mapo.png`` plot."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest

from nnunetv2_mapo.training.metrics import LOG_KEYS, panels
from nnunetv2_mapo.training.progress import FIGURE_SIZE, plot_mapo_progress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_KEYS = [key for _, keys in panels() for key in keys]


def logged(epochs: int, nan_every: int = 0) -> dict:
    values = {}
    for i, key in enumerate(ALL_KEYS):
        series = [float(e + i) for e in range(epochs)]
        if nan_every:
            series = [math.nan if e % nan_every == 0 else v for e, v in enumerate(series)]
        values[key] = series
    return values


def test_panels_plot_keys_the_trainer_logs():
    assert set(ALL_KEYS) <= set(LOG_KEYS)  # otherwise the plot would never be written
    assert len(ALL_KEYS) == len(set(ALL_KEYS))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def kept_figure(monkeypatch, data: dict, folder):
    """Plots ``data`` and returns the figure instead of closing it (the fixture closes it)."""
    figures = []
    with monkeypatch.context() as patch:
        patch.setattr(plt, "close", figures.append)
        plot_mapo_progress(data, str(folder))
    return figures[0]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_layout_has_no_overlaps_at_nnunets_figure_size_even_after_nnunets_plot(tmp_path, monkeypatch):
    import seaborn as sns

    sns.set(font_scale=2.5)  # what nnU-Net's progress.png leaves behind in the training process
    try:
        fig = kept_figure(monkeypatch, logged(300, nan_every=3), tmp_path)
    finally:
        sns.reset_orig()
    assert tuple(fig.get_size_inches()) == FIGURE_SIZE
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    assert len(axes) == len(panels())
    boxes = []  # (owner axes, bbox) of every piece of text and every legend
    for index, ax in enumerate(axes):
        low, high = ax.get_ylim()
        ticks = [label for label in ax.get_yticklabels() if low <= label.get_position()[1] <= high]  # drawn ones
        texts = [ax.title, ax._left_title, ax.xaxis.label, ax.yaxis.label, *ticks]
        boxes += [(index, t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
        legend = ax.get_legend()
        assert legend is not None
        for other in axes:  # a legend never covers a plotting area
            assert not _overlap(legend.get_window_extent(renderer), other.get_window_extent(renderer))
        boxes.append((index, legend.get_window_extent(renderer)))
    for i, (owner_a, a) in enumerate(boxes):
        for owner_b, b in boxes[i + 1:]:
            if owner_a != owner_b:
                assert not _overlap(a, b), (owner_a, owner_b)
    for ax_a, ax_b in zip(axes, axes[1:]):  # panels are stacked without touching
        assert not _overlap(ax_a.get_tightbbox(renderer), ax_b.get_window_extent(renderer))


def test_round_quantities_are_markers_and_rounds_are_marked(tmp_path, monkeypatch):
    data = logged(12)
    for key in ("mapo_regen_seconds", "mapo_dice_chosen", "mapo_dice_rejected", "mapo_dice_no_dropout"):
        data[key] = [float(e) if e in (4, 8) else math.nan for e in range(12)]
    for ax in kept_figure(monkeypatch, data, tmp_path).axes:
        round_lines = [line for line in ax.lines if line.get_linestyle() == ":"]
        assert sorted(line.get_xdata()[0] for line in round_lines) == [4, 8]
        for line in ax.lines:
            if line.get_label() == "mapo_dice_chosen":
                assert line.get_linestyle() == "None" and line.get_marker() == "o"


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
