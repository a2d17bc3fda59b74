"""``progress_mapo.png``: the MAPO curves, written beside nnU-Net's ``progress.png`` every epoch."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PANELS = (
    ("preference loss", ("mapo_dpo_loss",)),
    ("implicit rewards", ("mapo_rewards_chosen", "mapo_rewards_rejected", "mapo_reward_margin")),
    ("reward accuracy", ("mapo_reward_accuracy",)),
    ("preference set", ("mapo_num_pairs",)),
    # rounds only: is the preferred dropout hypothesis better than the network's own prediction?
    ("round Dice of the pairs", ("mapo_dice_chosen", "mapo_dice_rejected", "mapo_dice_no_dropout")),
    ("round time [s]", ("mapo_regen_seconds",)),
)


def plot_mapo_progress(logged: dict, output_folder: str, filename: str = "progress_mapo.png") -> str | None:
    """Plots the MAPO keys of nnU-Net's logging dict, one panel per quantity.

    Args:
        logged: ``logger.local_logger.my_fantastic_logging``.
        output_folder: Where to write the image.
        filename: Image name.

    Returns:
        The image path, or None when nothing has been logged yet.
    """
    epochs = min(len(logged.get(key, [])) for _, keys in PANELS for key in keys)
    if epochs == 0:
        return None
    x = np.arange(epochs)
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 3 * len(PANELS)), sharex=True)
    for ax, (title, keys) in zip(axes, PANELS):
        for key in keys:
            ax.plot(x, np.asarray(logged[key][:epochs], dtype=float), marker=".", label=key)
        ax.set_ylabel(title)
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    fig.tight_layout()
    path = os.path.join(output_folder, filename)
    fig.savefig(path)
    plt.close(fig)
    return path
