"""``nnunetv2_mapo round-cost``: how the cost of a preference round grows with cases and patch size.

A round scores ``cases`` patches, each with K dropout hypotheses plus one reference pass without dropout, all without
gradients (:func:`~nnunetv2_mapo.method.round.generate_preference_set`). This command times real rounds on
synthetic patches for U-Nets shaped like nnU-Net's plans (:func:`plans_like_unet`) and one training step of the same
network at a given batch size, and projects the share of training time that rounds take under a schedule:

    share = cases x t_case / (cases x t_case + regen_every x iterations x t_step)

with ``t_case`` the measured round time per case and ``t_step`` the measured time of one training step (forward,
backward and SGD update). The measured rounds use the package's own code (dropout hooks, scoring, pair selection,
reference log-likelihoods); only the data are synthetic. Nothing here trains a model to convergence.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nnunetv2_mapo.training.settings import ALL_SETTINGS

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_PATCHES = ("128x128", "256x256", "32x32x32", "48x48x48", "64x64x64")
DEFAULT_CASES = (4, 8, 16)


class RoundCostInputError(ValueError):
    """Bad arguments of ``nnunetv2_mapo round-cost``."""


def parse_patch(text: str) -> tuple[int, ...]:
    """``"40x56x40"`` -> ``(40, 56, 40)``.

    Raises:
        RoundCostInputError: Not 2 or 3 positive integers separated by ``x``, or an edge below 8.
    """
    try:
        patch = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        patch = ()
    if len(patch) not in (2, 3) or min(patch) < 8:
        raise RoundCostInputError(f"Patch size {text!r} is invalid: expected 2 or 3 integers >= 8 joined by 'x', "
                                  f"such as 128x128 or 40x56x40.")
    return patch


def plans_like_unet(patch: Sequence[int], input_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """A PlainConvUNet shaped the way nnU-Net's default planner shapes one for ``patch``.

    Stages: one per halving while every edge stays >= 4 voxels (at most 6 in 3D, 7 in 2D); features 32 doubling
    per stage up to 320 (3D) or 512 (2D); two 3x3(x3) convolutions per stage, instance norm, leaky ReLU, deep
    supervision on. Axes are pooled together (nnU-Net pools anisotropic patches axis by axis; close enough here).

    Args:
        patch: The patch size (2 or 3 edges).
        input_channels: Input modalities.
        num_classes: Output channels, background included.
    """
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    dim = len(patch)
    stages = min(1 + int(math.floor(math.log2(min(patch) / 4))), 6 if dim == 3 else 7)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    cap = 320 if dim == 3 else 512
    return PlainConvUNet(
        input_channels, stages, [min(32 * 2**i, cap) for i in range(stages)], conv, 3, [1] + [2] * (stages - 1),
        [2] * stages, num_classes, [2] * (stages - 1), conv_bias=True, norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True)


def _synthetic_batch(patch: Sequence[int], count: int, generator: torch.Generator) -> dict:
    """Noisy images of a bright ball with its label map (so that hypotheses disagree on a real boundary)."""
    import torch

    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in patch], indexing="ij")
    radius = torch.sqrt(sum(g**2 for g in grids))
    target = (radius < 0.5).to(torch.int16)[None, None].repeat(count, 1, *[1] * len(patch))
    data = target.float() + 0.5 * torch.randn(target.shape, generator=generator)
    return {"data": data, "target": target, "keys": [f"case_{i:03d}" for i in range(count)]}


def _timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _default(name: str) -> Any:
    """The trainer's default of a MAPO setting, so that timings and projections follow the defaults."""
    return ALL_SETTINGS[name].default


def measure(patch: Sequence[int], cases: Sequence[int], num_hypotheses: int = _default("mapo_num_hypotheses"),
            batch_size: int = 2, repeats: int = 2, device: str = "cpu") -> dict[str, Any]:
    """Times rounds of ``cases`` items and one training step for the U-Net of ``patch``.

    Args:
        patch: Patch size.
        cases: Case counts per round to time.
        num_hypotheses: K.
        batch_size: Batch size of the timed training step.
        repeats: Timings per value (the median is kept); one untimed warm-up call precedes them.
        device: Torch device.

    Returns:
        ``patch``, ``voxels``, ``stages``, ``step_seconds``, ``rounds`` (``cases``, ``seconds``, ``per_case``).
    """
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunetv2_mapo.method.dropout import inject_dropout
    from nnunetv2_mapo.method.round import generate_preference_set

    torch_device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    network = plans_like_unet(patch).to(torch_device)
    injector = inject_dropout(network)
    label_manager = LabelManager({"background": 0, "structure": 1}, None)
    rates = _default("mapo_dropout_rates")

    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False}, {}, 1, 1,
                          dice_class=MemoryEfficientSoftDiceLoss)
    optimizer = torch.optim.SGD(network.parameters(), 1e-3, momentum=0.99, nesterov=True)
    step_batch = _synthetic_batch(patch, batch_size, generator)
    data, target = step_batch["data"].to(torch_device), step_batch["target"].to(torch_device)

    def training_step() -> None:  # full-resolution head only: the other heads add little compute
        network.train()
        optimizer.zero_grad(set_to_none=True)
        loss(network(data)[0], target).backward()
        optimizer.step()

    training_step()  # untimed: first-call allocations
    step_seconds = _timed(training_step, repeats)

    rounds = []
    for count in cases:
        batches = [_synthetic_batch(patch, 1, generator) for _ in range(count)]

        def run_round(batches: list[dict] = batches) -> None:
            generate_preference_set(network, injector, batches, label_manager, num_hypotheses, rates, 0.0, 1,
                                    torch_device, torch.Generator(device=torch_device).manual_seed(1))

        if not rounds:
            generate_preference_set(network, injector, batches[:1], label_manager, num_hypotheses, rates, 0.0, 1,
                                    torch_device)  # untimed
        seconds = _timed(run_round, repeats)
        rounds.append({"cases": count, "seconds": seconds, "per_case": seconds / count})
    return {"patch": list(patch), "voxels": int(math.prod(patch)), "stages": len(network.encoder.stages),
            "batch_size": batch_size, "num_hypotheses": num_hypotheses, "step_seconds": step_seconds,
            "rounds": rounds}


def projected_share(per_case: float, step_seconds: float, cases: int, regen_every: int, iterations: int) -> float:
    """Share of training time spent in rounds for a schedule (see the module docstring).

    Raises:
        ValueError: A non-positive time or count.
    """
    if min(per_case, step_seconds) <= 0 or min(cases, regen_every, iterations) <= 0:
        raise ValueError("Times and counts must be > 0.")
    rounds = cases * per_case
    return rounds / (rounds + regen_every * iterations * step_seconds)


def format_report(results: Sequence[dict], cases_per_round: int = _default("mapo_cases_per_round"),
                  regen_every: int = _default("mapo_regen_every"),
                  iterations: int = _default("num_iterations_per_epoch")) -> str:
    """Markdown tables: round time against cases and patch size, and the projected share at a schedule."""
    lines = ["| patch | voxels | stages | cases | round (s) | per case (s) | per case per Mvoxel (s) |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        for r in result["rounds"]:
            lines.append(f"| {'x'.join(map(str, result['patch']))} | {result['voxels']} | {result['stages']} | "
                         f"{r['cases']} | {r['seconds']:.2f} | {r['per_case']:.3f} | "
                         f"{r['per_case'] / (result['voxels'] / 1e6):.2f} |")
    lines += ["", f"Projected share of training time in rounds with {cases_per_round} cases per round every "
                  f"{regen_every} epochs of {iterations} iterations (per-case time from the largest round above):", "",
              "| patch | training step (s) | round of the schedule (s) | per case / step | share |",
              "|---|---|---|---|---|"]
    for result in results:
        per_case = result["rounds"][-1]["per_case"]
        share = projected_share(per_case, result["step_seconds"], cases_per_round, regen_every, iterations)
        lines.append(f"| {'x'.join(map(str, result['patch']))} (batch {result['batch_size']}) | "
                     f"{result['step_seconds']:.3f} | {cases_per_round * per_case:.1f} | "
                     f"{per_case / result['step_seconds']:.2f} | {100 * share:.2f}% |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``nnunetv2_mapo round-cost`` to ``parser``."""
    parser.add_argument("--patches", nargs="+", default=list(DEFAULT_PATCHES),
                        help=f"patch sizes, e.g. 128x128 40x56x40 (default: {' '.join(DEFAULT_PATCHES)})")
    parser.add_argument("--cases", type=int, nargs="+", default=list(DEFAULT_CASES),
                        help=f"cases per timed round (default: {' '.join(map(str, DEFAULT_CASES))})")
    k = _default("mapo_num_hypotheses")
    parser.add_argument("-K", "--num-hypotheses", type=int, default=k,
                        help=f"dropout hypotheses per case (default {k})")
    parser.add_argument("--batch-size", type=int, default=2, help="batch size of the timed training step (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per value, median kept (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Runs ``nnunetv2_mapo round-cost``; returns the exit code (2 on bad input, before any timing)."""
    try:
        patches = [parse_patch(p) for p in args.patches]
        for name, value, minimum in (("--cases", min(args.cases), 1), ("-K", args.num_hypotheses, 2),
                                     ("--batch-size", args.batch_size, 1), ("--repeats", args.repeats, 1)):
            if value < minimum:
                raise RoundCostInputError(f"{name} must be >= {minimum}, got {value}.")
    except RoundCostInputError as err:
        print(f"nnunetv2_mapo round-cost: {err}", file=sys.stderr)
        return 2
    import torch

    torch.manual_seed(0)
    results = []
    for patch in patches:
        print(f"timing {'x'.join(map(str, patch))} ...", file=sys.stderr, flush=True)
        results.append(measure(patch, sorted(args.cases), args.num_hypotheses, args.batch_size, args.repeats,
                               args.device))
    print(format_report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"results": results, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "platform": platform.platform()}, handle, indent=2)
    return 0
