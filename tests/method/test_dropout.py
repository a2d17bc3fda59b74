"""Tests of ``nnunetv2_mapo.method.dropout``: hook-based dropout, parameters and state-dict keys unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunetv2_mapo.method.dropout import DropoutInjector, find_injector, inject_dropout, unwrap

pytestmark = pytest.mark.usefixtures("mapo_single_thread")


# ------------------------------------------------------------------------------------------------ networks
def _conv_and_norm(dim: int, norm: str) -> tuple[type[nn.Module], type[nn.Module]]:
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    if norm == "instance":
        return conv, nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    return conv, nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d


def plain_unet(dim: int, deep_supervision: bool = False, norm: str = "instance") -> nn.Module:
    conv, norm_op = _conv_and_norm(dim, norm)
    return PlainConvUNet(
        input_channels=1, n_stages=3, features_per_stage=(4, 8, 16), conv_op=conv, kernel_sizes=3, strides=(1, 2, 2),
        n_conv_per_stage=2, num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=norm_op,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )


def residual_unet(dim: int, norm: str = "instance") -> nn.Module:
    conv, norm_op = _conv_and_norm(dim, norm)
    return ResidualEncoderUNet(
        input_channels=1, n_stages=3, features_per_stage=(4, 8, 16), conv_op=conv, kernel_sizes=3, strides=(1, 2, 2),
        n_blocks_per_stage=(1, 1, 1), num_classes=3, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=norm_op,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )


class TinyTransformerBlock(nn.Module):
    """Token MLP with GELU, LayerNorm and a residual; ``(B, T, F)`` in, ``(B, T, F)`` out."""

    def __init__(self, features: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(features)
        self.up = nn.Linear(features, hidden)
        self.act = nn.GELU()
        self.down = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.act(self.up(self.norm(x))))


class FlattenedTokens(nn.Module):
    """Runs its MLP on ``(B * T, F)`` rows, the layout some transformers use."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(features, features)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f = x.shape
        return self.act(self.fc(x.reshape(b * t, f))).reshape(b, t, f)


class FunctionalReLUNet(nn.Module):
    """Calls its nonlinearity functionally: only convolutions can carry the hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


NETWORK_BUILDERS = {
    "plain2d": (lambda: plain_unet(2), (2, 1, 16, 16)),
    "plain3d": (lambda: plain_unet(3), (2, 1, 8, 8, 8)),
    "plain2d_ds": (lambda: plain_unet(2, deep_supervision=True), (2, 1, 16, 16)),
    "residual2d": (lambda: residual_unet(2), (2, 1, 16, 16)),
    "residual3d": (lambda: residual_unet(3), (2, 1, 8, 8, 8)),
    "transformer": (lambda: nn.Sequential(TinyTransformerBlock(), TinyTransformerBlock()), (2, 5, 8)),
}


def pair(name: str) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """A plain network and an injected copy with the same weights."""
    build, shape = NETWORK_BUILDERS[name]
    torch.manual_seed(0)
    plain = build()
    injected = copy.deepcopy(plain)
    inject_dropout(injected)
    return plain, injected, shape


def first(output):
    return output[0] if isinstance(output, (list, tuple)) else output


def count_hooks(network: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in network.modules())


# ------------------------------------------------------------------------------------------------ state dicts
@pytest.mark.parametrize("name", list(NETWORK_BUILDERS))
def test_state_dict_keys_and_values_unchanged(name):
    plain, injected, _ = pair(name)
    plain_state, injected_state = plain.state_dict(), injected.state_dict()
    assert list(injected_state) == list(plain_state)
    for key, value in plain_state.items():
        assert torch.equal(injected_state[key], value), key
    assert [n for n, _ in injected.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in injected.named_modules()] == [n for n, _ in plain.named_modules()]


@pytest.mark.parametrize("name", ["plain2d", "plain3d", "residual2d", "residual3d", "transformer"])
def test_state_dicts_load_both_ways_strictly(name):
    build, _ = NETWORK_BUILDERS[name]
    torch.manual_seed(1)
    plain = build()
    torch.manual_seed(2)
    injected = build()
    inject_dropout(injected)
    result = injected.load_state_dict(plain.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in plain.state_dict().items():
        assert torch.equal(injected.state_dict()[key], value)
    torch.manual_seed(3)
    fresh = build()
    fresh.load_state_dict(injected.state_dict(), strict=True)
    for key, value in injected.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_injector_is_not_a_submodule_or_buffer():
    _, injected, _ = pair("plain2d")
    assert not any(isinstance(m, DropoutInjector) for m in injected.modules())
    assert not any("mapo" in name for name in injected.state_dict())


# ------------------------------------------------------------------------------------------------ no rate set
@pytest.mark.parametrize("name", list(NETWORK_BUILDERS))
@pytest.mark.parametrize("train", [False, True])
def test_outputs_identical_without_rates(name, train):
    plain, injected, shape = pair(name)
    plain.train(train)
    injected.train(train)
    x = torch.randn(shape)
    with torch.no_grad():
        expected, got, again = plain(x), injected(x), injected(x)
    if isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert torch.equal(e, g)
    else:
        assert torch.equal(expected, got)
    assert torch.equal(first(got), first(again))  # deterministic


@pytest.mark.parametrize("name", ["plain2d", "residual3d", "transformer"])
def test_rates_change_outputs_and_stop_after_the_block(name):
    plain, injected, shape = pair(name)
    plain.eval()
    injected.eval()
    injector = find_injector(injected)
    x = torch.randn(shape)
    with torch.no_grad():
        clean = first(plain(x))
        with injector.sampling([0.3]):
            assert injector.active
            noisy = first(injected(x))
        assert not injector.active
        after = first(injected(x))
    assert not torch.allclose(noisy, clean)
    assert torch.equal(after, clean)


def test_rate_zero_for_all_samples_is_a_no_op():
    plain, injected, shape = pair("plain2d")
    plain.eval()
    injected.eval()
    x = torch.randn(shape)
    with torch.no_grad(), find_injector(injected).sampling([0.0, 0.0]):
        assert torch.equal(injected(x), plain(x))


# ------------------------------------------------------------------------------------------------ per-sample rates
@pytest.mark.parametrize("name", ["plain2d", "plain3d", "residual2d", "transformer"])
def test_per_sample_rates(name):
    plain, injected, shape = pair(name)
    plain.eval()
    injected.eval()
    x = torch.randn(shape)
    x[1] = x[0]  # the same item twice: only the rate differs
    with torch.no_grad():
        clean = first(plain(x))
        with find_injector(injected).sampling([0.0, 0.5]):
            noisy = first(injected(x))
    assert torch.equal(noisy[0], clean[0])
    assert not torch.allclose(noisy[1], clean[1])


def test_per_sample_rates_with_flattened_token_rows():
    torch.manual_seed(0)
    network = FlattenedTokens()
    injector = inject_dropout(network)
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        clean = network(x)
        with injector.sampling([0.5, 0.0, 0.5]):
            noisy = network(x)
    assert torch.equal(noisy[1], clean[1])
    assert not torch.allclose(noisy[0], clean[0])
    assert not torch.allclose(noisy[2], clean[2])


def test_rates_that_do_not_fit_the_batch_raise():
    _, injected, shape = pair("transformer")
    with pytest.raises(RuntimeError, match="do not match the batch dimension"):
        with torch.no_grad(), find_injector(injected).sampling([0.1, 0.2, 0.3]):
            injected(torch.randn(shape))  # batch of 2, 3 rates
    assert not find_injector(injected).active  # the block is left even on errors


def test_element_dropout_statistics_and_scaling():
    network = nn.Sequential(nn.Identity(), nn.ReLU())
    injector = inject_dropout(network)
    x = torch.ones(2, 4, 100, 100)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad(), injector.sampling([0.1, 0.6], generator):
        out = network(x)
    for sample, rate in ((0, 0.1), (1, 0.6)):
        values = out[sample]
        kept = values != 0
        assert torch.allclose(values[kept], torch.full_like(values[kept], 1.0 / (1.0 - rate)))  # inverted dropout
        assert abs((~kept).float().mean().item() - rate) < 0.01
        assert abs(values.mean().item() - 1.0) < 0.03  # expectation preserved


def test_channel_mode_zeroes_whole_channels():
    network = nn.Sequential(nn.Identity(), nn.ReLU())
    injector = inject_dropout(network, mode="channel")
    x = torch.ones(4, 64, 5, 6)
    with torch.no_grad(), injector.sampling([0.5], torch.Generator().manual_seed(0)):
        out = network(x)
    per_channel = out.reshape(4, 64, -1)
    assert torch.all(per_channel.amin(-1) == per_channel.amax(-1))  # each map all dropped or all kept
    dropped = (per_channel[..., 0] == 0).float().mean().item()
    assert 0.35 < dropped < 0.65
    assert set(per_channel[..., 0].unique().tolist()) == {0.0, 2.0}


@pytest.mark.parametrize("shape", [(4, 64, 7), (2, 64, 3, 4, 5)])
def test_channel_mode_for_1d_and_3d_feature_maps(shape):
    network = nn.Sequential(nn.Identity(), nn.ReLU())
    injector = inject_dropout(network, mode="channel")
    with torch.no_grad(), injector.sampling([0.5], torch.Generator().manual_seed(1)):
        out = network(torch.ones(shape)).reshape(shape[0], shape[1], -1)
    assert torch.all(out.amin(-1) == out.amax(-1))
    assert 0 < int((out[..., 0] == 0).sum()) < shape[0] * shape[1]


def test_element_mode_does_not_zero_whole_channels():
    network = nn.Sequential(nn.Identity(), nn.ReLU())
    injector = inject_dropout(network, mode="element")
    x = torch.ones(2, 8, 10, 10)
    with torch.no_grad(), injector.sampling([0.5], torch.Generator().manual_seed(0)):
        out = network(x).reshape(2, 8, -1)
    assert bool((out.amin(-1) != out.amax(-1)).all())


def test_channel_mode_on_a_unet_differs_from_element_mode():
    _, injected, shape = pair("plain2d")
    injected.eval()
    injector = find_injector(injected)
    x = torch.randn(shape)
    outputs = {}
    for mode in ("element", "channel"):
        injector.mode = mode
        with torch.no_grad(), injector.sampling([0.3], torch.Generator().manual_seed(0)):
            outputs[mode] = injected(x)
    assert not torch.allclose(outputs["element"], outputs["channel"])


def test_channel_mode_falls_back_to_elements_on_2d_outputs():
    network = nn.Sequential(nn.Linear(4, 256), nn.ReLU())
    nn.init.zeros_(network[0].weight)
    nn.init.ones_(network[0].bias)
    injector = inject_dropout(network, mode="channel")
    with torch.no_grad(), injector.sampling([0.5], torch.Generator().manual_seed(0)):
        out = network(torch.zeros(1, 4))
    assert 0 < int((out == 0).sum()) < 256


# ------------------------------------------------------------------------------------------------ reproducibility
def test_generator_makes_sampling_reproducible():
    _, injected, shape = pair("residual2d")
    injected.eval()
    injector = find_injector(injected)
    x = torch.randn(shape)

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad(), injector.sampling([0.2, 0.4], torch.Generator().manual_seed(seed)):
            return injected(x)

    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6))


def test_generator_does_not_consume_the_global_rng():
    _, injected, shape = pair("plain2d")
    x = torch.randn(shape)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad(), find_injector(injected).sampling([0.3], torch.Generator().manual_seed(0)):
        injected(x)
    assert torch.equal(torch.rand(3), expected)


def test_without_generator_sampling_follows_the_global_seed():
    _, injected, shape = pair("plain2d")
    injector = find_injector(injected)
    x = torch.randn(shape)
    outs = []
    for _ in range(2):
        torch.manual_seed(9)
        with torch.no_grad(), injector.sampling([0.3]):
            outs.append(injected(x))
    assert torch.equal(outs[0], outs[1])


# ------------------------------------------------------------------------------------------------ normalization
@pytest.mark.parametrize(("build", "shape"), [(lambda: plain_unet(2, norm="batch"), (2, 1, 16, 16)),
                                             (lambda: residual_unet(3, norm="batch"), (2, 1, 8, 8, 8))])
def test_batchnorm_running_stats_unchanged_when_sampling_in_eval(build, shape):
    torch.manual_seed(0)
    network = build()
    injector = inject_dropout(network)
    network.train()
    x = torch.randn(shape)
    with torch.no_grad():
        network(x)  # move the running stats away from their initial values
    network.eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad(), injector.sampling([0.4, 0.1]):
        network(x * 3 + 1)
    after = network.state_dict()
    assert any("running_mean" in k for k in before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not network.training


# ------------------------------------------------------------------------------------------------ invalid arguments
@pytest.mark.parametrize("rates", [[-0.1], [1.0], [0.2, 1.5], [], [float("nan")], [0.1, float("inf")]])
def test_invalid_rates_raise(rates):
    _, injected, _ = pair("plain2d")
    injector = find_injector(injected)
    with pytest.raises(ValueError, match="Dropout rates must lie in"):
        with injector.sampling(rates):
            pass
    assert not injector.active


def test_rates_may_be_a_tensor_or_a_scalar():
    _, injected, shape = pair("plain2d")
    injector = find_injector(injected)
    x = torch.randn(shape)
    generator = torch.Generator()
    with torch.no_grad():
        with injector.sampling(torch.tensor([0.3, 0.3]), generator.manual_seed(1)):
            from_tensor = injected(x)
        with injector.sampling(0.3, generator.manual_seed(1)):
            from_scalar = injected(x)
    assert torch.equal(from_tensor, from_scalar)


@pytest.mark.parametrize("mode", ["gaussian", "", "Element", None])
def test_invalid_mode_raises(mode):
    with pytest.raises(ValueError, match="Unknown dropout mode"):
        inject_dropout(plain_unet(2), mode=mode)
    injector = inject_dropout(plain_unet(2))
    with pytest.raises(ValueError, match="Unknown dropout mode"):
        injector.mode = mode
    assert injector.mode == "element"


def test_network_without_hookable_module_raises():
    class NoHooks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return torch.tanh(self.norm(x) * self.scale)

    with pytest.raises(ValueError, match="Cannot inject dropout into NoHooks") as err:
        inject_dropout(NoHooks())
    assert "ReLU" in str(err.value)


# ------------------------------------------------------------------------------------------------ hooks
def test_hooks_go_on_nonlinearities_only_when_present():
    network = plain_unet(2)
    injector = inject_dropout(network)
    assert injector.hooked_modules
    assert all(isinstance(m, nn.LeakyReLU) for m in injector.hooked_modules)
    assert len(injector.hooked_modules) == sum(isinstance(m, nn.LeakyReLU) for m in network.modules())
    assert count_hooks(network) == len(injector.hooked_modules)


def test_residual_unet_shared_modules_get_one_hook_each():
    network = residual_unet(2)  # registers some modules under two names (conv and all_modules.0)
    inject_dropout(network)
    assert all(len(m._forward_hooks) <= 1 for m in network.modules())


def test_fallback_hooks_convolutions_of_functional_networks():
    torch.manual_seed(0)
    network = FunctionalReLUNet()
    injector = inject_dropout(network)
    assert {type(m) for m in injector.hooked_modules} == {nn.Conv2d}
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        clean = network(x)
        with injector.sampling([0.0, 0.5]):
            noisy = network(x)
    assert torch.equal(noisy[0], clean[0])
    assert not torch.allclose(noisy[1], clean[1])


def test_inject_twice_returns_the_same_injector_without_a_second_hook():
    network = plain_unet(2)
    first_injector = inject_dropout(network)
    hooks = count_hooks(network)
    second = inject_dropout(network, mode="channel")
    assert second is first_injector
    assert count_hooks(network) == hooks
    assert second.mode == "channel"  # the new mode is applied


def test_remove_makes_the_network_plain_again():
    plain, injected, shape = pair("plain2d")
    injector = find_injector(injected)
    injector.remove()
    assert count_hooks(injected) == 0
    x = torch.randn(shape)
    with torch.no_grad(), injector.sampling([0.5]):
        assert torch.equal(injected(x), plain(x))


def test_gradients_flow_through_the_dropout_mask():
    _, injected, shape = pair("plain2d")
    injector = find_injector(injected)
    with injector.sampling([0.3]):
        injected(torch.randn(shape)).sum().backward()
    grads = {n: p.grad for n, p in injected.named_parameters() if p.grad is not None}
    assert "encoder.stages.0.0.convs.0.conv.weight" in grads  # reaches the first layer through every mask
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["encoder.stages.0.0.convs.0.conv.weight"].abs().sum() > 0


def test_deepcopy_gets_its_own_injector():
    plain, injected, shape = pair("plain2d")
    clone = copy.deepcopy(injected)
    assert find_injector(clone) is not find_injector(injected)
    x = torch.randn(shape)
    with torch.no_grad():
        with find_injector(injected).sampling([0.5]):
            assert torch.equal(clone(x), plain(x))  # the original's rates do not leak into the copy
        with find_injector(clone).sampling([0.5]):
            assert not torch.allclose(clone(x), plain(x))


# ------------------------------------------------------------------------------------------------ wrappers
def fake_ddp(module: nn.Module) -> nn.parallel.DistributedDataParallel:
    """A DistributedDataParallel object without a process group (only ``.module`` matters here)."""
    wrapper = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(wrapper)
    wrapper.module = module
    return wrapper


def test_find_injector_through_ddp_and_compile_wrappers():
    network = plain_unet(2)
    injector = inject_dropout(network)
    assert find_injector(network) is injector
    ddp = fake_ddp(network)
    assert unwrap(ddp) is network
    assert find_injector(ddp) is injector
    compiled = torch.compile(network)  # lazy: nothing is compiled until it is called
    assert compiled._orig_mod is network
    assert unwrap(compiled) is network
    assert find_injector(compiled) is injector
    nested = torch.compile(fake_ddp(network))
    assert find_injector(nested) is injector


def test_unwrap_leaves_plain_modules_alone():
    network = plain_unet(2)
    assert unwrap(network) is network


def test_find_injector_on_a_plain_network_raises():
    with pytest.raises(RuntimeError, match="PlainConvUNet has no MAPO dropout"):
        find_injector(fake_ddp(plain_unet(2)))
