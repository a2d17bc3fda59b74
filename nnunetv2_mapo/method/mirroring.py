"""Mirrored views of preference pairs: the pair patches augmented without a frozen reference network.

A pair's patch is fixed for a whole round, so the DPO term can fit its few patches within an epoch. Mirroring is the
augmentation nnU-Net itself applies at test time: it moves voxels without interpolating them, so the masks stay
exact. The mirrored views of a patch form a small, finite set (every subset of the mirror axes: 4 views in 2D,
8 in 3D), so the round computes the reference log-likelihoods of each view once, and a training step picks a view
per pair and finds its reference already computed. No frozen copy of the network, no extra pass per step.

A mirrored pair's reference log-likelihood is that of the mirrored masks under the reference network applied to the
mirrored patch. A mirror is a permutation of the voxels, and the log-likelihood a sum over them, so it equals the
log-likelihood of the *original* masks under the reference's output for the mirrored patch mirrored back
(:func:`mirrored_logits`): the round keeps one set of masks.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from nnunetv2_mapo.method.train_eval import full_resolution

View = tuple[int, ...]  # the spatial axes (0-based, over the patch's spatial dimensions) a view mirrors


def mirror_views(axes: Sequence[int] | None) -> list[View]:
    """Every combination of the mirror ``axes``, the unmirrored view first.

    Args:
        axes: Spatial axes that may be mirrored (nnU-Net's ``inference_allowed_mirroring_axes``), or None / empty
            for no mirroring.

    Returns:
        ``[(), (a,), (b,), (a, b), ...]``: ``2 ** len(axes)`` views, by size, then by axis.

    Raises:
        ValueError: A negative or repeated axis.
    """
    axes = tuple(int(a) for a in (axes or ()))
    if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"Mirror axes must be distinct spatial axes >= 0, got {list(axes)}.")
    return [view for size in range(len(axes) + 1) for view in itertools.combinations(sorted(axes), size)]


def mirror(tensor: torch.Tensor, view: View, spatial_dims: int) -> torch.Tensor:
    """Mirrors ``tensor`` along the spatial axes of ``view``; its last ``spatial_dims`` dimensions are spatial.

    The same call mirrors an image ``(C, *patch)``, a label map ``(*patch)``, region masks ``(R, *patch)`` and
    batches of them, so patch and masks always move together. Mirroring twice gives the tensor back.

    Raises:
        ValueError: An axis of ``view`` beyond ``spatial_dims``, or a tensor with fewer dimensions than that.
    """
    if tensor.ndim < spatial_dims or any(a >= spatial_dims for a in view):
        raise ValueError(f"Cannot mirror axes {list(view)} of a tensor of shape {tuple(tensor.shape)} with "
                         f"{spatial_dims} spatial dimensions.")
    if not view:
        return tensor
    first_spatial = tensor.ndim - spatial_dims
    return torch.flip(tensor, [first_spatial + a for a in view])


def mirrored_logits(network: torch.nn.Module, data: torch.Tensor, view: View) -> torch.Tensor:
    """The network's full-resolution logits for the mirrored ``data`` ``(n, C, *patch)``, mirrored back, so that
    they line up with the unmirrored masks (module docstring)."""
    spatial_dims = data.ndim - 2
    return mirror(full_resolution(network(mirror(data, view, spatial_dims))), view, spatial_dims)


def mirror_rows(tensor: torch.Tensor, views: Sequence[View], choice: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Mirrors each row ``i`` of ``tensor`` (a batch of pair tensors) by ``views[choice[i]]``.

    Args:
        tensor: ``(P, ...)``, spatial dimensions last.
        views: The set's views (:func:`mirror_views`).
        choice: ``(P,)`` index of each row's view.
        spatial_dims: Number of spatial dimensions.
    """
    rows = [mirror(row, views[int(index)], spatial_dims) for row, index in zip(tensor, choice.tolist())]
    return torch.stack(rows) if rows else tensor
