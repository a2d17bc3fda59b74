"""Known-answer tests of nnunetv2_mapo.method.train_eval."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.regularization import DropPath
from torch import nn

from nnunetv2_mapo.method.dropout import inject_dropout
from nnunetv2_mapo.method.train_eval import eval_mode, eval_mode_forward, mode_dependent_modules


def _unet(norm_op: type[nn.Module], norm_kwargs: dict | None = None, deep_supervision: bool = False) -> nn.Module:
    return PlainConvUNet(1, 2, (4, 8), nn.Conv2d, 3, (1, 2), (1, 1), 2, (1,), False, norm_op,
                         norm_kwargs or {"affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
                         deep_supervision=deep_supervision)


class _Residual(nn.Module):
    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + self.drop(y)


@pytest.mark.parametrize(("network", "expected"), [
    (_unet(nn.InstanceNorm2d), []),  # nnU-Net's default: the same function in both modes
    (_unet(nn.InstanceNorm2d, {"affine": True, "track_running_stats": True}), ["encoder.stages.0.0.convs.0.norm"]),
    (_unet(nn.BatchNorm2d), ["encoder.stages.0.0.convs.0.norm"]),
    (_Residual(nn.Dropout(0.0)), []),
    (_Residual(nn.Dropout2d(0.3)), ["drop"]),
    (_Residual(DropPath(0.0)), []),
    (_Residual(DropPath(0.2)), ["drop"]),
    (_Residual(nn.Identity()), []),
])
def test_mode_dependent_modules(network: nn.Module, expected: list[str]) -> None:
    found = mode_dependent_modules(network)
    assert found[:1] == expected[:1] and bool(found) == bool(expected)


def test_attention_dropout_counts_only_above_zero() -> None:
    assert mode_dependent_modules(nn.MultiheadAttention(8, 2, dropout=0.1)) == [""]
    assert mode_dependent_modules(nn.MultiheadAttention(8, 2, dropout=0.0)) == []


def test_eval_mode_restores_each_modules_flag() -> None:
    network = _unet(nn.BatchNorm2d)
    network.train()
    network.encoder.stages[0].eval()  # mixed modes come back as they were
    before = {name: m.training for name, m in network.named_modules()}
    with eval_mode(network):
        assert not any(m.training for m in network.modules())
    assert {name: m.training for name, m in network.named_modules()} == before


@pytest.mark.parametrize("drop", [DropPath(0.5), nn.Dropout(0.5)])
def test_eval_mode_forward_is_the_eval_function_with_gradients(drop: nn.Module) -> None:
    torch.manual_seed(0)
    network = _unet(nn.BatchNorm2d, deep_supervision=True)
    residual = _Residual(drop)
    inputs = torch.randn(3, 1, 16, 16)
    network.train()
    for _ in range(2):  # running statistics that differ from one batch's statistics
        network(torch.randn(4, 1, 16, 16) * 3 + 1)
    stats = network.encoder.stages[0][0].convs[0].norm.running_mean.clone()

    logits = eval_mode_forward(network, inputs)
    assert torch.equal(network.encoder.stages[0][0].convs[0].norm.running_mean, stats)  # eval: stats untouched
    network.eval()
    with torch.no_grad():
        expected = network(inputs)[0]  # deep supervision: the full-resolution output
    network.train()
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(network(inputs)[0], expected, atol=1e-3)  # the training-mode function differs
    logits.sum().backward()
    assert network.encoder.stages[0][0].convs[0].conv.weight.grad.abs().sum() > 0

    residual.train()
    out = eval_mode_forward(residual, inputs)
    torch.testing.assert_close(out, 2 * residual.conv(inputs))  # the stochastic branch is the identity in eval mode
    assert residual.training and residual.drop.training


def test_injected_dropout_hooks_stay_off_in_the_eval_pass() -> None:
    network = _unet(nn.InstanceNorm2d)
    inject_dropout(network)
    inputs = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(eval_mode_forward(network, inputs), eval_mode_forward(network, inputs))
