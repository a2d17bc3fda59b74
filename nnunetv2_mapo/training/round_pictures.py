"""``mapo_rounds/round_NNNN.png``: what a preference round preferred, for a few of its items.

One row per item: the image, the ground truth, the network's own prediction (dropout off), y+ and y-, each mask with
its Dice against the ground truth. 3D patches show the slice (along the first axis) with the most ground-truth
foreground. Region datasets show the number of regions a voxel belongs to (nested regions read as labels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

PANELS = (("image", None), ("ground truth", None), ("no dropout", "dice_network"), ("y+ (preferred)", "dice_chosen"),
          ("y- (dispreferred)", "dice_rejected"))
MASK_KEYS = ("reference", "network", "chosen", "rejected")


def as_label_map(mask: torch.Tensor, spatial_dims: int) -> np.ndarray:
    """A mask as an integer map: labels unchanged, region channels ``(R, *spatial)`` summed per voxel."""
    array = mask.numpy()
    if array.ndim > spatial_dims:  # regions
        return array.astype(np.int64).sum(axis=0)
    return array.astype(np.int64)


def most_foreground_slice(label_map: np.ndarray) -> int:
    """Index along the first axis of a 3D map with the most foreground voxels (the first one on ties)."""
    return int(np.argmax((label_map > 0).reshape(label_map.shape[0], -1).sum(axis=1)))


def _displayable_image(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` grey (first channel) or ``(H, W, 3)`` RGB, scaled to [0, 1] per picture."""
    picture = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    low, high = np.percentile(picture, (1, 99))
    return np.clip((picture - low) / (high - low if high > low else 1.0), 0, 1)


def write_round_picture(items: Sequence[dict], path: str, title: str) -> str:
    """Draws the items of :class:`nnunetv2_mapo.method.round.RoundExamples` into one PNG.

    Args:
        items: The examples (at least one).
        path: The image file; its folder is created.
        title: The figure's title (round and epoch).

    Returns:
        ``path``.

    Raises:
        ValueError: No items.
    """
    if not items:
        raise ValueError("No items to draw.")
    spatial_dims = items[0]["image"].ndim - 1
    fig, axes = plt.subplots(len(items), len(PANELS), figsize=(2.2 * len(PANELS), 2.3 * len(items) + 0.4),
                             squeeze=False)
    for row, item in zip(axes, items):
        maps = {key: as_label_map(item[key], spatial_dims) for key in MASK_KEYS if item[key] is not None}
        if "network" not in maps:  # a reference-free round has no pass without dropout
            maps["network"] = np.zeros_like(maps["reference"])
        image = item["image"].float().numpy()
        if spatial_dims == 3:
            index = most_foreground_slice(maps["reference"])
            maps = {key: value[index] for key, value in maps.items()}
            image = image[:, index]
        vmax = max(1, max(int(m.max()) for m in maps.values()))
        pictures = [_displayable_image(image)] + [maps[key] for key in MASK_KEYS]
        for ax, picture, (name, dice_key) in zip(row, pictures, PANELS):
            if picture.ndim == 2 and name != "image":
                ax.imshow(picture, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            else:
                ax.imshow(picture, cmap="gray", interpolation="nearest")
            ax.set_title(name if dice_key is None else f"{name}\nDice {item[dice_key]:.3f}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(item["key"], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path
