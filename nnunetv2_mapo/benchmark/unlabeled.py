"""The semi-supervised protocol of the benchmark: labeled, unlabeled and test cases from one labeled dataset.

``--unlabeled-cases N`` takes N of the held-out cases of ``--train-cases`` / ``--split-file`` (drawn with a fixed
seed, whole groups with ``--group-pattern``), copies their images (not their labels) into a folder of the workspace,
and removes them from the split: nnU-Net never sees them as labeled cases, and no test case is ever seen as unlabeled.
The MAPO arm gets the folder as ``mapo_unlabeled_folder``; the baseline trains on the labeled cases alone. The folder's
name holds a digest of its cases, so the benchmarks of several trainers on one protocol share it (and the cache of
its preprocessed images in ``nnUNet_preprocessed``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from nnunetv2_mapo.benchmark.split import SplitError, case_groups, held_out_groups, held_out_split

UNLABELED_SEED = 54321  # which held-out cases lose their labels: the same for every seed, trainer and machine


def carve_unlabeled(split: dict[str, list[str]], count: int, group_pattern: str | None = None,
                    seed: int = UNLABELED_SEED) -> tuple[dict[str, list[str]], list[str]]:
    """Moves ``count`` held-out cases (whole groups with ``group_pattern``) out of the split.

    Returns:
        The split without them (``train`` unchanged, ``val`` the test cases) and the unlabeled cases, sorted.

    Raises:
        SplitError: ``count`` would leave no test case, or is below 1.
    """
    held_out = sorted(split["val"])
    if not 1 <= count < len(held_out):
        raise SplitError(f"--unlabeled-cases {count}: the split holds out {len(held_out)} cases; take 1 to "
                         f"{len(held_out) - 1} of them as unlabeled so that some remain as the test set.")
    if group_pattern is not None:
        parts = held_out_groups(held_out, count, case_groups(held_out, group_pattern), seed)
    else:
        parts = held_out_split(held_out, count, seed)
    return {"train": list(split["train"]), "val": parts["val"]}, sorted(parts["train"])


def write_unlabeled_images(raw_dataset_folder: str, cases: list[str], root: str) -> str:
    """Copies the images of ``cases`` (every channel, no label) into ``root/<dataset>__<digest>`` once.

    Returns:
        The folder (what ``mapo_unlabeled_folder`` is set to).
    """
    with open(os.path.join(raw_dataset_folder, "dataset.json"), encoding="utf-8") as handle:
        dataset = json.load(handle)
    digest = hashlib.sha1(json.dumps(sorted(cases)).encode()).hexdigest()[:10]
    folder = os.path.join(root, f"{os.path.basename(os.path.normpath(raw_dataset_folder))}__{digest}")
    os.makedirs(folder, exist_ok=True)
    for case in cases:
        for channel in range(len(dataset["channel_names"])):
            name = f"{case}_{channel:04d}{dataset['file_ending']}"
            target = os.path.join(folder, name)
            if not os.path.isfile(target):
                shutil.copyfile(os.path.join(raw_dataset_folder, "imagesTr", name), target + ".part")
                os.replace(target + ".part", target)  # no half-copied image under the final name
    return folder
