"""Finding the benchmark's dataset in its workspace, or copying it there from ``--raw-source``."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

from nnunetv2_mapo.benchmark.spec import BenchmarkInputError, BenchmarkSpec
from nnunetv2_mapo.commands.workspace import Workspace, copy_raw_dataset


def locate_dataset(spec: BenchmarkSpec, workspace: Workspace, step: Callable[[str], None]) -> str:
    """The dataset's folder name (``DatasetXXX_Name``), after copying ``spec.raw_source`` into the workspace.

    Args:
        spec: The benchmark (``dataset_id``, ``raw_source``).
        workspace: Its workspace.
        step: Prints a progress line.

    Raises:
        BenchmarkInputError: The source is not a raw dataset of that id, or the workspace holds none or several.
    """
    prefix = f"Dataset{spec.dataset_id:03d}_"
    if spec.raw_source is not None:
        source = os.path.abspath(spec.raw_source)
        if not os.path.isfile(os.path.join(source, "dataset.json")):
            raise BenchmarkInputError(f"--raw-source {spec.raw_source} is not an nnU-Net raw dataset folder (no "
                                      f"dataset.json).")
        if not os.path.basename(os.path.normpath(source)).startswith(prefix):
            raise BenchmarkInputError(f"--raw-source {spec.raw_source} is not named {prefix}*, but --dataset is "
                                      f"{spec.dataset_id}.")
        target = os.path.join(workspace.raw, os.path.basename(os.path.normpath(source)))
        if os.path.abspath(target) == source:
            raise BenchmarkInputError(f"--raw-source {spec.raw_source} is the workspace's own raw folder.")
        if not os.path.isdir(target):
            step(f"copying {source} to {workspace.raw}")
            copy_raw_dataset(source, workspace.raw)
    raw = sorted(glob.glob(os.path.join(workspace.raw, prefix + "*")))
    preprocessed = sorted(glob.glob(os.path.join(workspace.preprocessed, prefix + "*")))
    if len(raw) > 1 or (not raw and len(preprocessed) != 1):
        found = raw or preprocessed
        raise BenchmarkInputError(
            f"Expected one {prefix}* dataset in {workspace.raw} (or, already preprocessed, in "
            f"{workspace.preprocessed}); found {found or 'none'}. Pass --raw-source PATH to copy one in.")
    return os.path.basename(raw[0] if raw else preprocessed[0])
