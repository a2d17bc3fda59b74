"""``nnunetv2_mapo convert-ph2``: the PH2 dermoscopy database in nnU-Net's raw format (``Dataset501_PH2``).

PH2 (Mendonca et al., EMBC 2013; free for research and benchmarking, obtained from its authors) ships one folder per
case, ``IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`` (RGB, about 576 x 767) and
``IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp`` (the lesion mask). The conversion writes, per case,
``imagesTr/IMDxxx_0000.png`` (the RGB image; nnU-Net's ``NaturalImage2DIO`` reads its three channels) and
``labelsTr/IMDxxx.png`` (0 background, 1 lesion), both shrunk by an integer factor (default 3: about 192 x 256, which
a 2-core CPU trains in minutes), and a ``dataset.json``. Images are shrunk by averaging each factor x factor block,
masks by a majority vote over the same block.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

DATASET_NAME = "Dataset501_PH2"


class PH2InputError(ValueError):
    """The folder is not a PH2 database, or a case lacks its image or its mask."""


def find_cases(ph2_root: str) -> dict[str, tuple[str, str]]:
    """``{case id: (image path, lesion mask path)}`` of every case under ``ph2_root``.

    Raises:
        PH2InputError: No case found, or a case whose lesion mask is missing.
    """
    images = sorted(glob.glob(os.path.join(ph2_root, "**", "*_Dermoscopic_Image", "*.bmp"), recursive=True))
    if not images:
        raise PH2InputError(f"No PH2 case under {ph2_root}: expected IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp "
                            f"(the layout of the PH2 database as its authors distribute it).")
    cases = {}
    for image in images:
        case = os.path.splitext(os.path.basename(image))[0]
        mask = os.path.join(os.path.dirname(os.path.dirname(image)), f"{case}_lesion", f"{case}_lesion.bmp")
        if not os.path.isfile(mask):
            raise PH2InputError(f"Case {case} has no lesion mask: {mask} is missing.")
        cases[case] = (image, mask)
    return cases


def shrink(array: np.ndarray, factor: int, majority: bool) -> np.ndarray:
    """Shrinks the first two axes by ``factor``: block means (images) or block majorities (binary masks).

    Edges that do not fill a whole block are cut off.
    """
    height, width = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    blocks = array[:height, :width].reshape(height // factor, factor, width // factor, factor, *array.shape[2:])
    mean = blocks.astype(np.float64).mean(axis=(1, 3))
    return (mean >= 0.5).astype(np.uint8) if majority else np.clip(np.round(mean), 0, 255).astype(np.uint8)


def convert_ph2(ph2_root: str, raw_folder: str, factor: int = 3) -> str:
    """Writes ``raw_folder/Dataset501_PH2`` from the PH2 database in ``ph2_root``.

    Args:
        ph2_root: The PH2 database folder (its case folders may sit at any depth below it).
        raw_folder: ``nnUNet_raw``.
        factor: Integer shrink factor (1 keeps the original size).

    Returns:
        The dataset folder.

    Raises:
        PH2InputError: Not a PH2 database, a missing mask, or a factor < 1 (before anything is written).
    """
    from PIL import Image

    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise PH2InputError(f"The shrink factor must be an integer >= 1, got {factor!r}.")
    cases = find_cases(ph2_root)
    target = os.path.join(raw_folder, DATASET_NAME)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(target, sub), exist_ok=True)
    for case, (image_path, mask_path) in cases.items():
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = (np.asarray(Image.open(mask_path).convert("L")) > 127).astype(np.uint8)
        if image.shape[:2] != mask.shape:
            raise PH2InputError(f"Case {case}: image {image.shape[:2]} and mask {mask.shape} differ in size.")
        Image.fromarray(shrink(image, factor, majority=False)).save(os.path.join(target, "imagesTr",
                                                                               f"{case}_0000.png"))
        Image.fromarray(shrink(mask, factor, majority=True)).save(os.path.join(target, "labelsTr", f"{case}.png"))
    dataset = {
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "foreground": 1},
        "numTraining": len(cases), "file_ending": ".png", "name": "PH2",
        "description": f"PH2 dermoscopy lesions, {len(cases)} cases, shrunk {factor}x (nnunetv2_mapo convert-ph2)",
        "licence": "PH2: free for research/benchmarking, cite Mendonca et al. 2013",
    }
    with open(os.path.join(target, "dataset.json"), "w", encoding="utf-8") as handle:
        json.dump(dataset, handle, indent=2)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``nnunetv2_mapo convert-ph2``."""
    parser.add_argument("ph2_root", help="the PH2 database folder (holds IMDxxx/IMDxxx_Dermoscopic_Image/...)")
    parser.add_argument("-o", "--output", default=os.environ.get("nnUNet_raw"),
                        help="nnUNet_raw folder to write Dataset501_PH2 into (default: $nnUNet_raw)")
    parser.add_argument("--factor", type=int, default=3, help="integer shrink factor (default 3; 1 keeps the size)")


def run(args: argparse.Namespace) -> int:
    """Runs ``nnunetv2_mapo convert-ph2``; 2 for unusable input."""
    if not args.output:
        print("nnunetv2_mapo convert-ph2: error: give -o NNUNET_RAW or set nnUNet_raw.", file=sys.stderr)
        return 2
    try:
        target = convert_ph2(args.ph2_root, args.output, args.factor)
    except PH2InputError as err:
        print(f"nnunetv2_mapo convert-ph2: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0
