"""Dropout injected into any network through forward hooks, so parameter names never change.

nnU-Net's architectures accept a ``dropout_op``, but inserting a module renumbers the state-dict keys and breaks
``-pretrained_weights`` from plain models. A forward hook on each nonlinearity adds no module and no parameter:
a MAPO network's ``state_dict`` equals the plain network's, whatever its class (plain or residual U-Net, 2D or 3D,
transformers). The hooks do nothing unless a rate is set, so training steps and inference (nnU-Net's predictor)
run the unchanged network, and predictions stay deterministic.

Rates are per sample: one batched forward of K copies of an item gives K hypotheses at K different rates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from nnunetv2_mapo.method import DROPOUT_MODES

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Softplus,
)
FALLBACK_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ATTRIBUTE = "_mapo_dropout"


class DropoutInjector:
    """Owns the dropout hooks of one network and the rates of the current forward pass.

    Args:
        network: The network to hook.
        mode: ``'element'`` drops single activations; ``'channel'`` drops whole feature maps (spatial dropout).

    Raises:
        ValueError: Unknown mode, or a network without any module to hook.
    """

    def __init__(self, network: nn.Module, mode: str = "element") -> None:
        self.mode = mode
        self._rates: torch.Tensor | None = None
        self._generator: torch.Generator | None = None
        targets = [m for m in network.modules() if isinstance(m, ACTIVATION_TYPES)]
        if not targets:
            # Networks that call their nonlinearities functionally: perturb the outputs of conv/linear layers.
            targets = [m for m in network.modules() if isinstance(m, FALLBACK_TYPES)]
        if not targets:
            raise ValueError(
                f"Cannot inject dropout into {type(network).__name__}: it has no activation, convolution or linear "
                f"module to hook. MAPO needs at least one of {[t.__name__ for t in ACTIVATION_TYPES]}."
            )
        # network.modules() yields a shared submodule once, so no module gets two hooks.
        self.hooked_modules = targets
        self._handles = [m.register_forward_hook(self._hook) for m in targets]

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in DROPOUT_MODES:
            raise ValueError(f"Unknown dropout mode {value!r}; allowed values: {list(DROPOUT_MODES)}.")
        self._mode = value

    @property
    def active(self) -> bool:
        return self._rates is not None

    @contextmanager
    def sampling(self, rates: Sequence[float] | torch.Tensor,
                 generator: torch.Generator | None = None) -> Iterator[None]:
        """Turns dropout on for the forward passes inside the block.

        Args:
            rates: One dropout rate per sample of the batch (or a single rate for all), each in [0, 1).
            generator: Random generator for the dropout masks (on the network's device), for reproducible rounds.

        Raises:
            ValueError: A rate outside [0, 1).
        """
        rates = torch.as_tensor(rates, dtype=torch.float32).reshape(-1)
        if rates.numel() == 0 or not bool(((rates >= 0) & (rates < 1)).all()):  # NaN fails too
            raise ValueError(f"Dropout rates must lie in [0, 1), got {rates.tolist()}.")
        self._rates, self._generator = rates, generator
        try:
            yield
        finally:
            self._rates, self._generator = None, None

    def remove(self) -> None:
        """Removes every hook (the network is plain again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._rates is None or not isinstance(output, torch.Tensor) or output.ndim < 2:
            return None
        rates = self._rates.to(output.device)
        n = output.shape[0]
        if rates.numel() == 1:
            rates = rates.expand(n)
        elif n != rates.numel():
            if n % rates.numel():
                raise RuntimeError(
                    f"Per-sample dropout rates ({rates.numel()}) do not match the batch dimension ({n}) of "
                    f"{type(module).__name__}'s output."
                )
            rates = rates.repeat_interleave(n // rates.numel())  # (batch * tokens, features) layouts
        rates = rates.to(output.dtype)
        if self.mode == "channel" and output.ndim >= 3:
            mask_shape = output.shape[:2] + (1,) * (output.ndim - 2)
        else:
            mask_shape = output.shape
        keep = 1.0 - rates.reshape((n,) + (1,) * (output.ndim - 1))
        noise = torch.rand(mask_shape, generator=self._generator, device=output.device, dtype=output.dtype)
        return output * (noise < keep).to(output.dtype) / keep


def inject_dropout(network: nn.Module, mode: str = "element") -> DropoutInjector:
    """Hooks dropout into ``network`` (once) and returns its injector.

    Args:
        network: Any ``nn.Module``; its parameters and state-dict keys are left unchanged.
        mode: See :class:`DropoutInjector`.

    Returns:
        The injector, also reachable later through :func:`find_injector`.
    """
    existing = network.__dict__.get(_ATTRIBUTE)
    if existing is not None:
        existing.mode = mode
        return existing
    injector = DropoutInjector(network, mode)
    network.__dict__[_ATTRIBUTE] = injector  # a plain attribute: not a submodule, not in the state dict
    return injector


def unwrap(network: nn.Module) -> nn.Module:
    """Returns the module inside DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, nn.Module):
            network = network._orig_mod
        else:
            return network


def find_injector(network: nn.Module) -> DropoutInjector:
    """Returns the injector of a (possibly wrapped) network.

    Raises:
        RuntimeError: The network was not built with :func:`inject_dropout`.
    """
    injector = unwrap(network).__dict__.get(_ATTRIBUTE)
    if injector is None:
        raise RuntimeError(
            f"{type(unwrap(network)).__name__} has no MAPO dropout. Build it with "
            f"nnUNetTrainerMAPO.build_network_architecture or call "
            f"nnunetv2_mapo.method.dropout.inject_dropout(network)."
        )
    return injector
