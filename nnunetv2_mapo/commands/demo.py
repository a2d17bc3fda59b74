"""``nnunetv2_mapo demo``: the whole nnU-Net workflow with MAPO on a small dataset, in minutes on a CPU.

Creates the dataset (synthetic 2D ellipses, or the Decathlon hippocampus MRI in nnU-Net's format when asked), plans and
preprocesses it, trains ``nnUNetTrainerMAPO`` on fold 0 with a short budget, predicts the fold's validation cases
with ``nnUNetv2_predict`` and prints Dice, HD95 and ASD per class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from nnunetv2_mapo.commands.synthetic import write_synthetic_dataset
from nnunetv2_mapo.commands.workspace import Workspace, copy_raw_dataset

SYNTHETIC_ID = 990
HIPPOCAMPUS_NAME = "Dataset004_Hippocampus"
HIPPOCAMPUS_HOWTO = (
    "Convert the Medical Segmentation Decathlon's Task04_Hippocampus (http://medicaldecathlon.com) with nnU-Net's "
    "'nnUNetv2_convert_MSD_dataset -i /path/to/Task04_Hippocampus', which writes "
    "$nnUNet_raw/Dataset004_Hippocampus, then pass --raw-source $nnUNet_raw/Dataset004_Hippocampus.")

DEMO_SETTINGS = {
    "num_epochs": 12,
    "num_iterations_per_epoch": 25,
    "num_val_iterations_per_epoch": 5,
    "mapo_warmup_epochs": 4,
    "mapo_regen_every": 4,
}


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hippocampus_source(raw_source: str | None) -> str:
    """The hippocampus raw dataset folder: ``raw_source``, else ``$nnUNet_raw/Dataset004_Hippocampus``.

    Raises:
        FileNotFoundError: Neither is a raw dataset folder; the message says how to make one.
    """
    candidates = [raw_source] if raw_source else []
    if not raw_source and os.environ.get("nnUNet_raw"):
        candidates.append(os.path.join(os.environ["nnUNet_raw"], HIPPOCAMPUS_NAME))
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "dataset.json")):
            return candidate
    tried = f" (tried {', '.join(candidates)})" if candidates else ""
    raise FileNotFoundError(f"No {HIPPOCAMPUS_NAME} raw dataset found{tried}. {HIPPOCAMPUS_HOWTO} Or use "
                            f"--dataset synthetic.")


def prepare_dataset(workspace: Workspace, dataset: str, raw_source: str | None) -> tuple[int, str]:
    """Writes or copies the demo dataset into the workspace; returns its id and configuration."""
    if dataset == "synthetic":
        if not os.path.isdir(os.path.join(workspace.raw, f"Dataset{SYNTHETIC_ID}_MAPODemo2D")):
            write_synthetic_dataset(workspace.raw, SYNTHETIC_ID, "MAPODemo2D", dim=2, num_cases=30, seed=1)
        return SYNTHETIC_ID, "2d"
    source = hippocampus_source(raw_source)
    if not os.path.isdir(os.path.join(workspace.raw, os.path.basename(os.path.normpath(source)))):
        copy_raw_dataset(source, workspace.raw)
    return 4, "3d_fullres"


def format_table(summary: dict, label_names: dict[str, str]) -> str:
    """Markdown table of the per-class means in an evaluation summary."""
    rows = ["| class | Dice | HD95 (mm) | ASD (mm) |", "|---|---|---|---|"]
    for key, metrics in summary["mean"].items():
        name = label_names.get(str(key), str(key))
        rows.append(f"| {name} | {metrics['Dice']:.4f} | {metrics.get('HD95', float('nan')):.2f} | "
                    f"{metrics.get('ASD', float('nan')):.2f} |")
    fg = summary["foreground_mean"]
    rows.append(f"| **mean** | {fg['Dice']:.4f} | {fg.get('HD95', float('nan')):.2f} | "
                f"{fg.get('ASD', float('nan')):.2f} |")
    return "\n".join(rows)


def run_demo(workdir: str, dataset: str = "synthetic", device: str | None = None, raw_source: str | None = None,
             settings: dict | None = None) -> dict:
    """Runs the demo and returns the evaluation summary (also written to ``workdir/summary.json``).

    Args:
        workdir: Folder for the nnU-Net folders, predictions and logs (created if needed).
        dataset: ``'synthetic'`` or ``'hippocampus'``.
        device: ``'cpu'``, ``'cuda'`` or None (auto).
        raw_source: The hippocampus raw dataset folder (default ``$nnUNet_raw/Dataset004_Hippocampus``).
        settings: Overrides of :data:`DEMO_SETTINGS`.
    """
    from nnunetv2_mapo.evaluation.folder import evaluate_folder

    device = device or default_device()
    workspace = Workspace(workdir)
    log_file = os.path.join(workspace.root, "demo.log")
    started = time.time()

    def step(message: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {message}", flush=True)

    dataset_id, configuration = prepare_dataset(workspace, dataset, raw_source)
    name = workspace.dataset_name(dataset_id)
    step(f"dataset {name} ready in {workspace.raw}; planning and preprocessing ({configuration})")
    workspace.plan_and_preprocess(dataset_id, [configuration], log_file=log_file)
    step(f"training nnUNetTrainerMAPO on fold 0 ({device}); log: {log_file}")
    workspace.train(dataset_id, configuration, 0, "nnUNetTrainerMAPO", device, {**DEMO_SETTINGS, **(settings or {})},
                    extra_args=["--c"], log_file=log_file)
    cases = workspace.validation_cases(dataset_id, 0)
    step(f"predicting the {len(cases)} validation cases with nnUNetv2_predict")
    images = workspace.stage_images(dataset_id, cases, os.path.join(workspace.root, "validation_images"))
    predictions = os.path.join(workspace.root, "predictions")
    workspace.predict(dataset_id, configuration, 0, "nnUNetTrainerMAPO", device, images, predictions,
                      log_file=log_file)
    step("evaluating (Dice from nnU-Net, HD95 and ASD in mm)")
    summary_file = os.path.join(workspace.root, "summary.json")
    summary = evaluate_folder(
        os.path.join(workspace.raw, name, "labelsTr"), predictions,
        os.path.join(predictions, "dataset.json"), os.path.join(predictions, "plans.json"), summary_file, 1)
    with open(os.path.join(workspace.raw, name, "dataset.json")) as handle:
        labels = json.load(handle)["labels"]
    names = {str(v if not isinstance(v, list) else tuple(v)): k for k, v in labels.items()}
    print(format_table(summary, names))
    step(f"done; results in {workspace.output_folder(dataset_id, 'nnUNetTrainerMAPO', configuration, 0)}")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``nnunetv2_mapo demo``."""
    parser.add_argument("--workdir", default="demo_run", help="output folder (default: ./demo_run)")
    parser.add_argument("--dataset", choices=("synthetic", "hippocampus"), default="synthetic")
    parser.add_argument("--raw-source", default=None,
                        help=f"raw {HIPPOCAMPUS_NAME} folder for --dataset hippocampus (nnUNetv2_convert_MSD_dataset "
                             f"makes it; default $nnUNet_raw/{HIPPOCAMPUS_NAME})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")


def run(args: argparse.Namespace) -> int:
    """Runs ``nnunetv2_mapo demo``; 2 when the dataset is missing (before any work)."""
    if args.dataset == "hippocampus":
        try:
            hippocampus_source(args.raw_source)
        except FileNotFoundError as err:
            print(f"nnunetv2_mapo demo: error: {err}", file=sys.stderr)
            return 2
    run_demo(args.workdir, args.dataset, args.device, args.raw_source)
    return 0
