"""``progress_mapo.png``: the MAPO curves, written beside nnU-Net's ``progress.png`` every epoch.

Same figure size as nnU-Net's ``progress.png`` (30 x 54 inches) and large fonts like it, one panel per quantity
(:func:`nnunetv2_mapo.training.metrics.panels`), stacked on a shared epoch axis. Per-step quantities are lines;
round quantities are markers at the epochs where a round ran, and every panel marks those epochs with a dotted
line. Legends sit outside the axes, so they never cover a curve. Font sizes are set here rather than taken from
matplotlib's global state, which nnU-Net's own plot changes (``seaborn.set(font_scale=2.5)``).
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunetv2_mapo.training.metrics import ROUND_KEYS, panels  # noqa: E402

FIGURE_SIZE = (30, 54)  # nnU-Net's progress.png
STYLE = {
    "font.size": 28, "axes.titlesize": 32, "axes.labelsize": 28, "xtick.labelsize": 24, "ytick.labelsize": 24,
    "legend.fontsize": 24, "axes.grid": True, "grid.alpha": 0.4, "axes.facecolor": "#f2f2f5",
}
ROUND_MARKER_KEY = "mapo_regen_seconds"  # logged in (and only in) the epochs that start with a round


def plot_mapo_progress(logged: dict, output_folder: str, filename: str = "progress_mapo.png") -> str | None:
    """Plots the MAPO keys of nnU-Net's logging dict, one panel per quantity.

    Args:
        logged: ``logger.local_logger.my_fantastic_logging``.
        output_folder: Where to write the image.
        filename: Image name.

    Returns:
        The image path, or None when nothing has been logged yet.
    """
    layout = panels()
    epochs = min(len(logged.get(key, [])) for _, keys in layout for key in keys)
    if epochs == 0:
        return None
    x = np.arange(epochs)
    rounds = [e for e, v in enumerate(logged.get(ROUND_MARKER_KEY, [])[:epochs]) if not math.isnan(float(v))]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(layout), 1, figsize=FIGURE_SIZE, sharex=True)
        # A fixed layout (a constrained one costs a second per epoch on a CPU): legends in the right margin, room
        # between panels for the tick labels at their edges.
        fig.subplots_adjust(left=0.07, right=0.76, bottom=0.04, top=0.98, hspace=0.22)
        for ax, (title, keys) in zip(axes, layout):
            for index, key in enumerate(keys):
                values = np.asarray(logged[key][:epochs], dtype=float)
                if key in ROUND_KEYS:
                    ax.plot(x, values, "o", markersize=16, color=f"C{index}", label=key)
                else:
                    ax.plot(x, values, "-", linewidth=4, color=f"C{index}", label=key)
            for epoch in rounds:
                ax.axvline(epoch, color="grey", linestyle=":", linewidth=2)
            ax.set_title(title, loc="left")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        axes[-1].set_xlabel("epoch (dotted lines: preference rounds)")
        path = os.path.join(output_folder, filename)
        fig.savefig(path, dpi=50)  # 1500 x 2700 pixels: readable, and half the drawing time of 100 dpi
        plt.close(fig)
    return path
