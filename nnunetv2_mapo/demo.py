"""``nnunetv2_mapo demo``: the whole nnU-Net workflow with MAPO on a small dataset, in minutes on a CPU.

Creates the dataset (synthetic 2D ellipses, or a few cases of the shared hippocampus MRI when asked), plans and
preprocesses it, trains ``nnUNetTrainerMAPO`` on fold 0 with a short budget, predicts the fold's validation cases
with ``nnUNetv2_predict`` and prints Dice, HD95 and ASD per class.
"""

from __future__ import annotations

import json
import os
import time

from nnunetv2_mapo.pipeline import Workspace, copy_raw_dataset
from nnunetv2_mapo.synthetic import write_synthetic_dataset

SYNTHETIC_ID = 990
HIPPOCAMPUS_SOURCE = os.path.join("..", "shared", "data", "Dataset004_Hippocampus")

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


def prepare_dataset(workspace: Workspace, dataset: str, shared_folder: str | None) -> tuple[int, str]:
    """Writes or copies the demo dataset into the workspace; returns its id and configuration."""
    if dataset == "synthetic":
        if not os.path.isdir(os.path.join(workspace.raw, f"Dataset{SYNTHETIC_ID}_MAPODemo2D")):
            write_synthetic_dataset(workspace.raw, SYNTHETIC_ID, "MAPODemo2D", dim=2, num_cases=30, seed=1)
        return SYNTHETIC_ID, "2d"
    source = shared_folder or HIPPOCAMPUS_SOURCE
    if not os.path.isdir(source):
        raise FileNotFoundError(f"{source} not found. Pass --shared-data /path/to/Dataset004_Hippocampus or use "
                                f"--dataset synthetic.")
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


def run_demo(workdir: str, dataset: str = "synthetic", device: str | None = None, shared_folder: str | None = None,
             settings: dict | None = None) -> dict:
    """Runs the demo and returns the evaluation summary (also written to ``workdir/summary.json``).

    Args:
        workdir: Folder for the nnU-Net folders, predictions and logs (created if needed).
        dataset: ``'synthetic'`` or ``'hippocampus'``.
        device: ``'cpu'``, ``'cuda'`` or None (auto).
        shared_folder: The hippocampus raw dataset folder (default ``../shared/data/Dataset004_Hippocampus``).
        settings: Overrides of :data:`DEMO_SETTINGS`.
    """
    from nnunetv2_mapo.evaluation import evaluate_folder

    device = device or default_device()
    workspace = Workspace(workdir)
    log_file = os.path.join(workspace.root, "demo.log")
    started = time.time()

    def step(message: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {message}", flush=True)

    dataset_id, configuration = prepare_dataset(workspace, dataset, shared_folder)
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
