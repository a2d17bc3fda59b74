"""Shared by the benchmark tests: argument parsing, a small spec, a run record."""

from __future__ import annotations

import argparse

from nnunetv2_mapo.benchmark.cli import add_arguments as add_benchmark_arguments
from nnunetv2_mapo.benchmark.spec import DEFAULT_MAPO_TRAINER, BenchmarkSpec

MAPO = DEFAULT_MAPO_TRAINER


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    return parser.parse_args(argv)


def spec(**changes) -> BenchmarkSpec:
    values = dict(dataset_id=990, configuration="2d", folds=(0,), epochs=4, iterations=3, val_iterations=2)
    values.update(changes)
    return BenchmarkSpec(**values)


def run(trainer: str, seed: int, fold: int, **values) -> dict:
    return {"trainer": trainer, "seed": seed, "fold": fold, **values}
