"""Networks whose training-mode function differs from their eval-mode function, and the eval-mode function with
gradients.

A preference round computes the reference log-likelihoods with the network in eval mode. nnU-Net's U-Nets with
InstanceNorm compute the same function in both modes, so the pair rows can share the batch's training forward and
the rewards start at zero when a round starts. With BatchNorm (batch statistics in training, running statistics in
eval) or native stochastic layers (``nn.Dropout``, DropPath: Primus uses ``drop_path_rate=0.2``) the two differ, and
the DPO term would chase that difference. For such networks the pair rows go through the network in eval mode, with
gradients: the function the reference was computed with, which is also the one nnU-Net's predictor uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# Stochastic-depth layers name their rate drop_prob (timm, dynamic_network_architectures) or p (torchvision).
_STOCHASTIC_DEPTH_NAMES = ("DropPath", "StochasticDepth", "DropBlock")


def mode_dependent_modules(network: nn.Module) -> list[str]:
    """The names of the modules that compute differently in training and in eval mode.

    Args:
        network: Any network (unwrapped from DDP and ``torch.compile``).

    Returns:
        Qualified module names (``''`` for the network itself), in ``named_modules`` order: BatchNorm layers,
        InstanceNorm layers that track running statistics, dropout layers and attention with a rate above 0, and
        stochastic-depth layers (DropPath, StochasticDepth, DropBlock) with a rate above 0. Empty for nnU-Net's
        default InstanceNorm U-Nets.
    """
    names = []
    for name, module in network.named_modules():
        if _is_mode_dependent(module):
            names.append(name)
    return names


def _is_mode_dependent(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True  # batch statistics in training; running statistics (or, without them, still the batch's) in eval
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return module.track_running_stats
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    if any(part in type(module).__name__ for part in _STOCHASTIC_DEPTH_NAMES):
        rate = getattr(module, "drop_prob", getattr(module, "p", 0.0))
        return not isinstance(rate, (int, float)) or rate > 0
    return False


def full_resolution(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output of a network: the first of its deep-supervision outputs, or the output itself."""
    return output[0] if isinstance(output, Sequence) and not isinstance(output, torch.Tensor) else output


@contextmanager
def eval_mode(network: nn.Module) -> Iterator[nn.Module]:
    """Puts every module of ``network`` in eval mode inside the block and restores each module's own flag after it
    (a network whose modules were in mixed modes gets them back as they were). Gradients are not affected."""
    flags = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        yield network
    finally:
        for module, training in flags:
            module.training = training


def eval_mode_forward(network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The network's eval-mode output for ``inputs``, with gradients (full resolution with deep supervision).

    Args:
        network: The network, unwrapped (its dropout hooks, if any, stay as they are: off outside a round).
        inputs: ``(N, C_in, *patch)``.
    """
    with eval_mode(network):
        return full_resolution(network(inputs))
