"""Unlabeled scans the nnU-Net way: a folder of raw images, checked, preprocessed once with the plans, and cached.

The folder holds images as ``imagesTr`` does (``CASE_0000<file_ending>``, one file per channel), without labels.
:func:`list_unlabeled_cases` checks what can be checked from the file names alone (before any data is loaded);
:func:`prepare_unlabeled_cache` preprocesses the cases with the configuration's own preprocessor into
``nnUNet_preprocessed/<dataset>/<data identifier>_unlabeled/<folder name>_<hash>/`` (nnU-Net's blosc2 case files, a
segmentation of background only) and refuses a case whose preprocessed image equals a labeled case's (a leak that
another file name hides). A manifest records the plans the cache was made with and each source file's size and
time: a changed file is preprocessed again, a cache made with other plans is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import (
    comp_blosc2_params,
    infer_dataset_class,
    nnUNetDatasetBlosc2,
)
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import distributed as dist

MANIFEST = "unlabeled_manifest.json"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class UnlabeledDataError(ValueError):
    """The unlabeled folder or its cache cannot be used (the message names the fix)."""


def list_unlabeled_cases(folder: str | None, dataset_json: dict, labeled_identifiers: Iterable[str] = ()) -> \
        dict[str, list[str]]:
    """The cases of an unlabeled folder, checked by their file names.

    Args:
        folder: The folder of raw images (``mapo_unlabeled_folder``).
        dataset_json: The dataset's ``dataset.json`` (``channel_names``, ``file_ending``).
        labeled_identifiers: The labeled cases of the fold (training and validation); an unlabeled case of the same
            name is a leak.

    Returns:
        ``{case: [channel files, in channel order]}``, sorted by case.

    Raises:
        UnlabeledDataError: No folder set, a missing or empty folder, no file with the dataset's file ending, a file
            not named ``CASE_XXXX<ending>``, a case with other channels than the dataset's, or a case that is also a
            labeled case.
    """
    if not folder:
        raise UnlabeledDataError(
            "No unlabeled folder is set. Set mapo_unlabeled_folder, for example nnUNet_mapo_config="
            "'{\"mapo_unlabeled_folder\": \"/path/to/imagesUnlabeled\"}', to a folder of raw images named as in "
            "imagesTr (CASE_0000.nii.gz, one file per channel).")
    if not os.path.isdir(folder):
        raise UnlabeledDataError(f"The unlabeled folder {folder} does not exist. Set mapo_unlabeled_folder to a "
                                 f"folder of raw images named as in imagesTr (CASE_0000<file ending>).")
    ending = dataset_json["file_ending"]
    names = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    if not names:
        raise UnlabeledDataError(f"The unlabeled folder {folder} is empty. Put the raw images there (CASE_0000"
                                 f"{ending}, one file per channel), or unset mapo_unlabeled_folder.")
    images = [name for name in names if name.endswith(ending)]
    if not images:
        found = sorted({os.path.splitext(name)[1] or name for name in names})
        raise UnlabeledDataError(f"The unlabeled folder {folder} has no file ending in '{ending}', the dataset's "
                                 f"file_ending (found: {found}). Convert the images to '{ending}' as for imagesTr.")
    cases: dict[str, dict[int, str]] = {}
    for name in images:
        match = _CHANNEL.match(name[:-len(ending)])
        if match is None:
            raise UnlabeledDataError(f"{os.path.join(folder, name)} is not named CASE_XXXX{ending} (a four-digit "
                                     f"channel index, as in imagesTr). Rename it, for example to "
                                     f"{name[:-len(ending)]}_0000{ending}.")
        cases.setdefault(match["case"], {})[int(match["channel"])] = os.path.join(folder, name)
    expected = list(range(len(dataset_json["channel_names"])))
    for case, channels in cases.items():
        if sorted(channels) != expected:
            raise UnlabeledDataError(
                f"Unlabeled case {case} in {folder} has channels {sorted(channels)}, but the dataset has "
                f"{len(expected)} ({dataset_json['channel_names']}): files {case}_0000{ending} to "
                f"{case}_{expected[-1]:04d}{ending} are needed.")
    leaked = sorted(set(cases) & set(labeled_identifiers))
    if leaked:
        raise UnlabeledDataError(
            f"{len(leaked)} unlabeled case(s) in {folder} are also labeled cases of the dataset ({leaked[:5]}): "
            f"a case must not be both. Remove them from the unlabeled folder.")
    return {case: [channels[c] for c in expected] for case, channels in sorted(cases.items())}


def cache_folder(preprocessed_dataset_folder: str, unlabeled_folder: str) -> str:
    """Where the unlabeled cases of ``unlabeled_folder`` are cached for one preprocessed configuration."""
    real = os.path.realpath(unlabeled_folder)
    tag = hashlib.sha1(real.encode()).hexdigest()[:8]
    name = os.path.basename(real.rstrip(os.sep)) or "unlabeled"
    return os.path.join(preprocessed_dataset_folder.rstrip(os.sep) + "_unlabeled", f"{name}_{tag}")


def preprocessing_fingerprint(plans_manager: PlansManager, configuration_manager: ConfigurationManager) -> dict:
    """What the preprocessed arrays depend on: the plans' name, transpose, intensity statistics and configuration."""
    return json.loads(json.dumps({
        "plans_name": plans_manager.plans_name, "transpose_forward": plans_manager.transpose_forward,
        "intensity_properties": plans_manager.foreground_intensity_properties_per_channel,
        "configuration": configuration_manager.configuration}, sort_keys=True, default=str))


def _source_stamp(files: list[str]) -> list[list]:
    return [[os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]


def _array_hash(array) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(array[:], dtype=np.float32)).tobytes()).hexdigest()


def _write_manifest(folder: str, manifest: dict) -> None:
    temporary = os.path.join(folder, MANIFEST + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    os.replace(temporary, os.path.join(folder, MANIFEST))  # never half-written


def prepare_unlabeled_cache(unlabeled_folder: str, preprocessed_dataset_folder: str, plans_manager: PlansManager,
                            configuration_manager: ConfigurationManager, dataset_json: dict, labeled_dataset,
                            log: Callable[[str], None] = print) -> tuple[str, list[str]]:
    """Preprocesses the unlabeled cases that the cache lacks (or whose source changed) and checks for leaks.

    Args:
        unlabeled_folder: The folder of raw images.
        preprocessed_dataset_folder: The labeled cases' preprocessed folder (``trainer.preprocessed_dataset_folder``).
        plans_manager: The plans.
        configuration_manager: The configuration being trained.
        dataset_json: The dataset's ``dataset.json``.
        labeled_dataset: nnU-Net's dataset over the fold's labeled cases, whose images are compared with the
            unlabeled ones.
        log: Where progress lines go.

    Returns:
        The cache folder and the unlabeled case identifiers in it.

    Raises:
        UnlabeledDataError: Anything :func:`list_unlabeled_cases` refuses, a cache made with other plans, or an
            unlabeled image equal to a labeled case's after preprocessing.
    """
    labeled = list(labeled_dataset.identifiers)
    cases = list_unlabeled_cases(unlabeled_folder, dataset_json, labeled)
    folder = cache_folder(preprocessed_dataset_folder, unlabeled_folder)
    fingerprint = preprocessing_fingerprint(plans_manager, configuration_manager)
    manifest_file = os.path.join(folder, MANIFEST)
    manifest = {"source": os.path.realpath(unlabeled_folder), "preprocessing": fingerprint, "cases": {}}
    if os.path.isfile(manifest_file):
        with open(manifest_file, encoding="utf-8") as handle:
            saved = json.load(handle)
        if saved.get("preprocessing") != fingerprint:
            raise UnlabeledDataError(
                f"The unlabeled cache {folder} was preprocessed with other plans than "
                f"'{plans_manager.plans_name}' / '{configuration_manager.data_identifier}' have now (they were changed "
                f"after it was made). Delete {folder}; it is rebuilt at the next start.")
        manifest["cases"] = {case: entry for case, entry in saved.get("cases", {}).items() if case in cases}
    os.makedirs(folder, exist_ok=True)
    todo = [case for case, files in cases.items()
            if manifest["cases"].get(case, {}).get("source") != _source_stamp(files)]
    if todo:
        log(f"MAPO: preprocessing {len(todo)} unlabeled case(s) of {unlabeled_folder} into {folder}")
        preprocessor = configuration_manager.preprocessor_class(verbose=False)
        patch = tuple(configuration_manager.patch_size)
    for case in todo:
        data, seg, properties = preprocessor.run_case(cases[case], None, plans_manager, configuration_manager,
                                                      dataset_json)
        data = data.astype(np.float32, copy=False)
        seg = np.zeros(seg.shape, dtype=np.int8)  # no label: background only (the loader needs a segmentation)
        properties["class_locations"] = {}
        for stale in (".b2nd", "_seg.b2nd", ".pkl"):  # an earlier version of the case, or an interrupted write
            if os.path.isfile(path := os.path.join(folder, case + stale)):
                os.remove(path)
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, os.path.join(folder, case), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        manifest["cases"][case] = {"source": _source_stamp(cases[case]), "shape": list(data.shape),
                                   "hash": _array_hash(data)}
        _write_manifest(folder, manifest)
    _write_manifest(folder, manifest)
    check_no_image_leak(manifest["cases"], labeled_dataset, unlabeled_folder)
    return folder, sorted(manifest["cases"])


def check_no_image_leak(unlabeled: dict[str, dict], labeled_dataset, unlabeled_folder: str) -> None:
    """Refuses an unlabeled case whose preprocessed image equals a labeled case's (compared where the shapes match).

    Raises:
        UnlabeledDataError: Naming both cases.
    """
    by_shape: dict[tuple, dict[str, str]] = {}
    for case, entry in unlabeled.items():
        by_shape.setdefault(tuple(entry["shape"]), {})[entry["hash"]] = case
    for identifier in labeled_dataset.identifiers:
        data = labeled_dataset.load_case(identifier)[0]
        same_shape = by_shape.get(tuple(data.shape))
        if same_shape and (case := same_shape.get(_array_hash(data))) is not None:
            raise UnlabeledDataError(
                f"Unlabeled case {case} in {unlabeled_folder} is the same image as the labeled case {identifier} "
                f"(equal after preprocessing): a case must not be both. Remove it from the unlabeled folder.")


def cached_cases(folder: str) -> list[str]:
    """The case identifiers a cache's manifest lists."""
    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as handle:
        return sorted(json.load(handle)["cases"])


def labeled_cases(trainer) -> list[str]:
    """The labeled cases a trainer's fold uses: its training and validation cases (nnU-Net's ``do_split``)."""
    train, val = trainer.do_split()
    return sorted({*train, *val})


def check_unlabeled_folder(trainer) -> dict[str, list[str]]:
    """:func:`list_unlabeled_cases` for a trainer's ``mapo_unlabeled_folder`` against its fold's labeled cases."""
    return list_unlabeled_cases(trainer.mapo_unlabeled_folder, trainer.dataset_json, labeled_cases(trainer))


def prepare_unlabeled_data(trainer) -> tuple[str, list[str]]:
    """:func:`prepare_unlabeled_cache` for a trainer with ``mapo_unlabeled_folder``: rank 0 preprocesses and checks,
    the other ranks wait for it and read the manifest.

    Returns:
        The cache folder and its case identifiers.

    Raises:
        UnlabeledDataError: As :func:`prepare_unlabeled_cache`, or a folder without any case.
    """
    folder = cache_folder(trainer.preprocessed_dataset_folder, trainer.mapo_unlabeled_folder)
    if trainer.local_rank == 0:
        labeled = infer_dataset_class(trainer.preprocessed_dataset_folder)(trainer.preprocessed_dataset_folder,
                                                                           labeled_cases(trainer))
        prepare_unlabeled_cache(trainer.mapo_unlabeled_folder, trainer.preprocessed_dataset_folder,
                                               trainer.plans_manager, trainer.configuration_manager,
                                               trainer.dataset_json, labeled, trainer.print_to_log_file)
    if trainer.is_ddp:
        dist.barrier()
    keys = cached_cases(folder)
    trainer.print_to_log_file(f"{type(trainer).__name__}: {len(keys)} unlabeled cases from "
                              f"{trainer.mapo_unlabeled_folder} (cache {folder})")
    return folder, keys
