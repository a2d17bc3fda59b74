"""Shared by the tests of the round and of the preference set: a tiny U-Net and batches it nearly solves."""

from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import nn

from nnunetv2_mapo.method.dropout import inject_dropout
from nnunetv2_mapo.method.round import generate_preference_set

LABELS = LabelManager({"background": 0, "a": 1, "b": 2}, regions_class_order=None)
LABELS_IGNORE = LabelManager({"background": 0, "a": 1, "b": 2, "ignore": 3}, regions_class_order=None)
REGIONS = LabelManager({"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
CPU = torch.device("cpu")
RATES = (0.1, 0.3, 0.5)
K = 4


def tiny_unet(num_classes: int = 3, norm: str = "instance", deep_supervision: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm_op = nn.InstanceNorm2d if norm == "instance" else nn.BatchNorm2d
    network = PlainConvUNet(
        input_channels=1, n_stages=2, features_per_stage=(4, 8), conv_op=nn.Conv2d, kernel_sizes=3, strides=(1, 2),
        n_conv_per_stage=1, num_classes=num_classes, n_conv_per_stage_decoder=1, conv_bias=True, norm_op=norm_op,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    inject_dropout(network)
    return network


def clean_logits(network: nn.Module, data: torch.Tensor) -> torch.Tensor:
    was_training = network.training
    network.eval()
    with torch.no_grad():
        out = network(data)
    network.train(was_training)
    return out[0] if isinstance(out, (list, tuple)) else out


def label_batches(network: nn.Module, ignore: bool = False, count: int = 6, per_batch: int = 3, seed: int = 0):
    """Synthetic batches whose targets are the clean network's own prediction (high Dice, dropout lowers it)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(count, 1, 16, 16, generator=generator) * 3
    target = clean_logits(network, data).argmax(1, keepdim=True).float()
    if ignore:
        target[:, :, 12:, :] = 3  # the ignore label over a band
    keys = [f"case_{i}" for i in range(count)]
    return [{"data": data[s:s + per_batch], "target": target[s:s + per_batch], "keys": keys[s:s + per_batch]}
            for s in range(0, count, per_batch)]


def region_batches(network: nn.Module, count: int = 4):
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(count, 1, 16, 16, generator=generator) * 3
    logits = clean_logits(network, data)
    seg = (logits[:, 0] > 0).long() + ((logits[:, 0] > 0) & (logits[:, 1] > 0)).long()  # labels 0, 1, 2
    transform = ConvertSegmentationToRegionsTransform(regions=list(REGIONS.foreground_regions), channel_in_seg=0)
    target = torch.stack([transform(segmentation=s[None])["segmentation"] for s in seg])
    return [{"data": data, "target": target, "keys": [f"r{i}" for i in range(count)]}]


def generate(network, batches, label_manager=LABELS, margin=0.05, items_per_forward=2, seed=0, **kwargs):
    return generate_preference_set(network, inject_dropout(network), batches, label_manager, K, RATES, margin,
                                   items_per_forward, CPU, torch.Generator().manual_seed(seed), **kwargs)
