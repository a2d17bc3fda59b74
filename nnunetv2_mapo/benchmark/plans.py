"""Plans variants: nnU-Net's plans with another batch size, using the same preprocessed data."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from nnunetv2_mapo.benchmark.spec import DEFAULT_PLANS, BenchmarkInputError, _positive, plans_identifier
from nnunetv2_mapo.training.checkpointing import atomic_path


def check_configuration(plans: Mapping[str, Any], configuration: str, plans_file: str = "plans") -> None:
    """Raises when ``configuration`` is not in the plans.

    Raises:
        BenchmarkInputError: Unknown configuration, with the ones that exist.
    """
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise BenchmarkInputError(f"Configuration {configuration!r} is not in {plans_file}; it has {available}.")


def make_plans_variant(plans: Mapping[str, Any], configuration: str, batch_size: int) -> dict[str, Any]:
    """A copy of nnU-Net plans with another batch size for one configuration.

    The copy keeps every ``data_identifier``, so it uses the preprocessed data of the original plans; its
    ``plans_name`` is the new identifier, which nnU-Net puts in the output folder name
    (``<trainer>__nnUNetPlans_bs{B}__<configuration>``).

    Args:
        plans: The plans (``nnUNetPlans.json``).
        configuration: The configuration to change.
        batch_size: The new batch size (>= 1).

    Returns:
        The new plans.

    Raises:
        BenchmarkInputError: Unknown configuration or a batch size < 1.
    """
    check_configuration(plans, configuration)
    _positive("--batch-size", batch_size)
    variant = json.loads(json.dumps(plans))
    variant["plans_name"] = plans_identifier(batch_size)
    # A configuration that inherits from another keeps its own keys on top of the parent's, so this is enough.
    variant["configurations"][configuration]["batch_size"] = int(batch_size)
    return variant


def write_plans_variant(preprocessed_dataset_folder: str, configuration: str, batch_size: int) -> str:
    """Writes ``nnUNetPlans_bs{B}.json`` beside ``nnUNetPlans.json`` (only when it changes).

    Args:
        preprocessed_dataset_folder: ``nnUNet_preprocessed/DatasetXXX_Name``.
        configuration: The configuration whose batch size changes.
        batch_size: The batch size.

    Returns:
        The plans identifier to pass to ``nnUNetv2_train -p``.

    Raises:
        BenchmarkInputError: No ``nnUNetPlans.json`` or an unknown configuration.
    """
    source = os.path.join(preprocessed_dataset_folder, DEFAULT_PLANS + ".json")
    if not os.path.isfile(source):
        raise BenchmarkInputError(f"{source} does not exist; plan and preprocess the dataset first.")
    with open(source, encoding="utf-8") as handle:
        plans = json.load(handle)
    identifier = plans_identifier(batch_size)
    variant = make_plans_variant(plans, configuration, batch_size)
    target = os.path.join(preprocessed_dataset_folder, identifier + ".json")
    if os.path.isfile(target):
        with open(target, encoding="utf-8") as handle:
            if json.load(handle) == variant:
                return identifier
    with atomic_path(target) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(variant, handle, indent=4)
    return identifier
