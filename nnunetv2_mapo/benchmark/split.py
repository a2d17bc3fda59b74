"""A fixed low-data split for the benchmark: few training cases, every other case held out as the test set.

nnU-Net trains fold ``f`` on ``splits_final.json[f]['train']`` and, after training, predicts every case of its
``'val'`` list with its own predictor (sliding window, mirroring, resampling back to the original geometry) from the
checkpoint of the last epoch. With a split of one fold whose ``'val'`` list holds all the cases not trained on, that
final validation is the held-out test set's prediction, and nothing selects a model on it (nnU-Net's per-epoch pseudo
Dice on a few of these cases is logged, never used to choose a checkpoint).

Related cases (frames of one video sequence, crops of one slide, scans of one patient) are near-duplicates: a split
that puts some on each side measures memory, not generalization. ``--group-pattern REGEX`` names each case's group
(the regular expression's first group, matched at the start of the case identifier) and keeps every group on one
side: ``--train-cases N`` then draws whole groups until at least N cases are in training, and a ``--split-file`` that
splits a group is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnunetv2_mapo.benchmark.spec import BenchmarkInputError

SPLIT_SEED = 12345  # the training cases of --train-cases N: the same for every seed, trainer and machine


class SplitError(BenchmarkInputError):
    """A split that cannot be used (unknown cases, overlap, too few cases, another split already in place)."""


def dataset_cases(raw_dataset_folder: str) -> list[str]:
    """The case identifiers of a raw nnU-Net dataset (its ``labelsTr``), sorted."""
    with open(os.path.join(raw_dataset_folder, "dataset.json"), encoding="utf-8") as handle:
        ending = json.load(handle)["file_ending"]
    labels = os.path.join(raw_dataset_folder, "labelsTr")
    return sorted(name[: -len(ending)] for name in os.listdir(labels) if name.endswith(ending))


def case_groups(cases: Sequence[str], pattern: str) -> dict[str, str]:
    """Each case's group: the first group of ``pattern`` matched at the start of its identifier.

    Args:
        cases: Case identifiers.
        pattern: A regular expression with at least one group, e.g. ``^(seq\\d+)_`` for ``seq3_0012``.

    Raises:
        SplitError: Cases the pattern does not match (the first few are named).
    """
    compiled = re.compile(pattern)
    groups, unmatched = {}, []
    for case in cases:
        match = compiled.match(case)
        if match is None or match.group(1) is None:
            unmatched.append(case)
        else:
            groups[case] = match.group(1)
    if unmatched:
        raise SplitError(f"--group-pattern {pattern!r} does not match {len(unmatched)} case(s), e.g. {unmatched[:3]}: "
                         "every case needs a group (the pattern is matched at the start of the case identifier).")
    return groups


def held_out_groups(cases: Sequence[str], train_cases: int, groups: dict[str, str], seed: int = SPLIT_SEED
                    ) -> dict[str, list[str]]:
    """Whole groups drawn in a fixed random order for training until they hold at least ``train_cases`` cases; all
    other groups held out.

    Raises:
        SplitError: ``train_cases`` out of range (as :func:`held_out_split`), or the drawn groups would leave no group
            to hold out.
    """
    _check_train_cases(train_cases, len(cases))
    sizes = Counter(groups[c] for c in cases)
    names = sorted(sizes)
    chosen: set[str] = set()
    drawn = 0
    for index in np.random.RandomState(seed).permutation(len(names)):
        if drawn >= train_cases:
            break
        chosen.add(names[index])
        drawn += sizes[names[index]]
    if len(chosen) == len(names):
        raise SplitError(f"--train-cases {train_cases} with --group-pattern: the {len(names)} groups hold "
                         f"{len(cases)} cases, and drawing whole groups until {train_cases} cases leaves no group to "
                         "hold out; train on fewer cases.")
    return {"train": sorted(c for c in cases if groups[c] in chosen),
            "val": sorted(c for c in cases if groups[c] not in chosen)}


def check_groups_apart(split: dict[str, list[str]], groups: dict[str, str]) -> None:
    """Refuses a split that puts cases of one group on both sides.

    Raises:
        SplitError: Naming the groups that are split.
    """
    both = sorted({groups[c] for c in split["train"]} & {groups[c] for c in split["val"]})
    if both:
        raise SplitError(f"The split puts cases of group(s) {both[:5]} both in training and in the held-out set; "
                         "move each group to one side, or drop --group-pattern.")


def _check_train_cases(train_cases: int, count: int) -> None:
    if not 1 <= train_cases < count:
        raise SplitError(f"--train-cases {train_cases}: the dataset has {count} cases; train on 1 to {count - 1} of "
                         "them so that some are held out.")


def held_out_split(cases: Sequence[str], train_cases: int, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """``train_cases`` cases drawn with a fixed seed for training; all the others held out.

    Raises:
        SplitError: ``train_cases`` leaves no case to hold out, or is below 1.
    """
    cases = sorted(cases)
    _check_train_cases(train_cases, len(cases))
    chosen = set(np.random.RandomState(seed).choice(len(cases), train_cases, replace=False).tolist())
    return {"train": [c for i, c in enumerate(cases) if i in chosen],
            "val": [c for i, c in enumerate(cases) if i not in chosen]}


def read_split_file(path: str, cases: Sequence[str]) -> dict[str, list[str]]:
    """A split from a JSON file: ``{"train": [...], "val": [...]}`` or nnU-Net's list of folds (the first is used).

    Raises:
        SplitError: Unreadable file, missing lists, unknown or repeated cases, or overlapping lists.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data: Any = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise SplitError(f"--split-file {path}: cannot read it as JSON ({err}).") from err
    split = data[0] if isinstance(data, list) and data else data
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) and split[k] for k in ("train", "val")):
        raise SplitError(f"--split-file {path}: expected {{\"train\": [...], \"val\": [...]}} (both non-empty) or "
                         f"nnU-Net's splits_final.json layout.")
    train, val = [str(c) for c in split["train"]], [str(c) for c in split["val"]]
    unknown = sorted(set(train + val) - set(cases))
    if unknown:
        raise SplitError(f"--split-file {path}: cases not in the dataset: {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''}.")
    if len(set(train)) != len(train) or len(set(val)) != len(val) or set(train) & set(val):
        raise SplitError(f"--split-file {path}: a case is repeated or both trained on and held out.")
    return {"train": sorted(train), "val": sorted(val)}


def split_for(train_cases: int | None, split_file: str | None, raw_dataset_folder: str,
              group_pattern: str | None = None) -> dict[str, list[str]] | None:
    """The benchmark's split (``--train-cases`` or ``--split-file``, groups kept apart with ``--group-pattern``), or
    None for nnU-Net's own 5-fold split.

    Raises:
        SplitError: See :func:`held_out_split`, :func:`held_out_groups`, :func:`read_split_file`,
            :func:`case_groups` and :func:`check_groups_apart`.
    """
    if train_cases is None and split_file is None:
        return None
    cases = dataset_cases(raw_dataset_folder)
    groups = case_groups(cases, group_pattern) if group_pattern is not None else None
    if split_file is not None:
        split = read_split_file(split_file, cases)
        if groups is not None:
            check_groups_apart(split, groups)
        return split
    if groups is not None:
        return held_out_groups(cases, train_cases, groups)
    return held_out_split(cases, train_cases)


def install_split(preprocessed_dataset_folder: str, split: dict[str, list[str]]) -> bool:
    """Writes ``splits_final.json`` with the split as fold 0, unless it holds exactly this split already.

    Returns:
        Whether the file was written.

    Raises:
        SplitError: The folder holds another split (other benchmarks of this workspace use it).
    """
    path = os.path.join(preprocessed_dataset_folder, "splits_final.json")
    wanted = [{"train": list(split["train"]), "val": list(split["val"])}]
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            existing = json.load(handle)
        if existing == wanted:
            return False
        raise SplitError(f"{path} holds another split ({len(existing)} folds; fold 0 trains on "
                         f"{len(existing[0]['train'])} cases). nnU-Net reads one split per dataset and workspace: "
                         f"run this benchmark with another --workdir.")
    os.makedirs(preprocessed_dataset_folder, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(wanted, handle, indent=2)
    os.replace(path + ".tmp", path)
    return True
