"""Runs nnU-Net's own command-line tools in a self-contained workspace (demo, benchmark, end-to-end tests).

Everything goes through the real ``nnUNetv2_*`` commands, as a user would type them, with the nnU-Net folders of
one workspace and the CPU-friendly defaults of ``docs/usage.md`` (one export worker, augmentation in the main
process) unless the caller's environment says otherwise.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass


class CommandFailed(RuntimeError):
    """An nnU-Net command exited with an error; the message holds the end of its output."""


class NNUNetCommandNotFound(FileNotFoundError):
    """One of nnU-Net's commands (``nnUNetv2_train``, ...) is neither beside this Python nor on PATH."""


def nnunet_command(name: str) -> str:
    """The path of one of nnU-Net's console commands.

    The folder of the running interpreter comes first (a virtual environment's ``bin``, whether activated or not),
    then ``PATH``.

    Raises:
        NNUNetCommandNotFound: The command is in neither place; the message says how to install it.
    """
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return found
    raise NNUNetCommandNotFound(
        f"nnU-Net's command {name!r} is neither beside this Python ({os.path.dirname(sys.executable)}) nor on PATH. "
        f"Install nnU-Net into this environment ('{sys.executable} -m pip install \"nnunetv2>=2.8,<2.9\"', which "
        f"'pip install nnunetv2_mapo' does) or run the command from the environment that has it.")


@dataclass
class Workspace:
    """The three nnU-Net folders under one root.

    Args:
        root: Folder holding ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``.
    """

    root: str

    def __post_init__(self) -> None:
        self.root = os.path.abspath(self.root)
        for folder in (self.raw, self.preprocessed, self.results):
            os.makedirs(folder, exist_ok=True)

    @property
    def raw(self) -> str:
        return os.path.join(self.root, "nnUNet_raw")

    @property
    def preprocessed(self) -> str:
        return os.path.join(self.root, "nnUNet_preprocessed")

    @property
    def results(self) -> str:
        return os.path.join(self.root, "nnUNet_results")

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for nnU-Net commands: the caller's, this workspace's folders, CPU-friendly defaults."""
        env = dict(os.environ)
        env.update(nnUNet_raw=self.raw, nnUNet_preprocessed=self.preprocessed, nnUNet_results=self.results)
        env.setdefault("nnUNet_def_n_proc", "1")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(extra or {})
        return env

    def run(self, command: Sequence[str], extra_env: dict[str, str] | None = None, log_file: str | None = None,
            timeout: float | None = None) -> str:
        """Runs a command, returns its output; raises :class:`CommandFailed` with the output's end on failure."""
        command = [nnunet_command(command[0]) if command[0].startswith("nnUNetv2_") else command[0], *command[1:]]
        result = subprocess.run(command, env=self.environment(extra_env), capture_output=True, text=True,
                                timeout=timeout)
        output = result.stdout + result.stderr
        if log_file:
            with open(log_file, "a", encoding="utf-8") as handle:
                handle.write(f"$ {' '.join(command)}\n{output}\n")
        if result.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-40:])
            raise CommandFailed(f"'{' '.join(command)}' failed with exit code {result.returncode}:\n{tail}")
        return output

    def dataset_name(self, dataset_id: int) -> str:
        """``DatasetXXX_Name`` of a dataset in ``nnUNet_raw``."""
        matches = glob.glob(os.path.join(self.raw, f"Dataset{dataset_id:03d}_*"))
        if len(matches) != 1:
            raise FileNotFoundError(f"Expected one Dataset{dataset_id:03d}_* folder in {self.raw}, found {matches}.")
        return os.path.basename(matches[0])

    def plan_and_preprocess(self, dataset_id: int, configurations: Sequence[str], log_file: str | None = None,
                            planner: str | None = None, plans: str = "nnUNetPlans") -> str:
        """``nnUNetv2_plan_and_preprocess`` (skipped when the plans and data already exist).

        Args:
            planner: ``-pl`` (for example ``nnUNetPlannerResEncM``); ``plans`` is then the plans it writes
                (``nnUNetResEncUNetMPlans``).
        """
        name = self.dataset_name(dataset_id)
        done = [os.path.isdir(os.path.join(self.preprocessed, name, f"{plans}_{c}")) for c in configurations]
        if all(done):
            return ""
        # nnUNet_n_proc_DA=0 breaks planning (torch.set_num_threads(0)); planning needs no augmentation workers.
        return self.run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configurations, "-np", "1",
                         *(["-pl", planner] if planner else [])], extra_env={"nnUNet_n_proc_DA": "1"},
                        log_file=log_file)

    def train(self, dataset_id: int, configuration: str, fold: int | str, trainer: str, device: str,
              settings: dict | None = None, extra_args: Sequence[str] = (), log_file: str | None = None,
              timeout: float | None = None) -> str:
        """``nnUNetv2_train`` with ``settings`` passed through ``nnUNet_mapo_config`` (any trainer reads none)."""
        extra_env = {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
        if settings is not None:
            extra_env["nnUNet_mapo_config"] = json.dumps(settings)
        return self.run(["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-tr", trainer, "-device",
                         device, *extra_args], extra_env=extra_env, log_file=log_file, timeout=timeout)

    def output_folder(self, dataset_id: int, trainer: str, configuration: str, fold: int | str,
                      plans: str = "nnUNetPlans") -> str:
        """nnU-Net's results folder of one fold."""
        return os.path.join(self.results, self.dataset_name(dataset_id), f"{trainer}__{plans}__{configuration}",
                            f"fold_{fold}")

    def validation_cases(self, dataset_id: int, fold: int) -> list[str]:
        """The fold's validation case identifiers from ``splits_final.json``."""
        with open(os.path.join(self.preprocessed, self.dataset_name(dataset_id), "splits_final.json")) as handle:
            return list(json.load(handle)[fold]["val"])

    def stage_images(self, dataset_id: int, case_ids: Sequence[str], target: str) -> str:
        """Copies the raw images of ``case_ids`` to ``target`` (input folder for ``nnUNetv2_predict``)."""
        os.makedirs(target, exist_ok=True)
        images = os.path.join(self.raw, self.dataset_name(dataset_id), "imagesTr")
        for case in case_ids:
            for path in glob.glob(os.path.join(images, f"{case}_[0-9][0-9][0-9][0-9].*")):
                shutil.copy2(path, target)
        return target

    def predict(self, dataset_id: int, configuration: str, fold: int | str, trainer: str, device: str,
                input_folder: str, output_folder: str, log_file: str | None = None,
                plans: str = "nnUNetPlans") -> str:
        """``nnUNetv2_predict`` with one worker for preprocessing and export."""
        return self.run(["nnUNetv2_predict", "-i", input_folder, "-o", output_folder, "-d", str(dataset_id),
                         "-c", configuration, "-f", str(fold), "-tr", trainer, "-p", plans, "-device", device,
                         "-npp", "1", "-nps", "1", "--disable_progress_bar"], log_file=log_file)


def copy_raw_dataset(source: str, raw_root: str, case_ids: Sequence[str] | None = None) -> str:
    """Copies an nnU-Net raw dataset (optionally only some cases) into ``raw_root``; never writes into ``source``.

    Raises:
        FileNotFoundError: ``source`` is not a raw dataset folder.
    """
    dataset_json = os.path.join(source, "dataset.json")
    if not os.path.isfile(dataset_json):
        raise FileNotFoundError(f"{source} is not an nnU-Net raw dataset (no dataset.json).")
    target = os.path.join(raw_root, os.path.basename(os.path.normpath(source)))
    with open(dataset_json) as handle:
        meta = json.load(handle)
    ending = meta["file_ending"]
    labels = sorted(glob.glob(os.path.join(source, "labelsTr", f"*{ending}")))
    cases = [os.path.basename(p)[: -len(ending)] for p in labels]
    if case_ids is not None:
        cases = [c for c in cases if c in set(case_ids)]
    os.makedirs(os.path.join(target, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(target, "labelsTr"), exist_ok=True)
    for case in cases:
        shutil.copy2(os.path.join(source, "labelsTr", case + ending), os.path.join(target, "labelsTr"))
        for image in glob.glob(os.path.join(source, "imagesTr", f"{case}_[0-9][0-9][0-9][0-9]{ending}")):
            shutil.copy2(image, os.path.join(target, "imagesTr"))
    meta["numTraining"] = len(cases)
    with open(os.path.join(target, "dataset.json"), "w") as handle:
        json.dump(meta, handle, indent=2)
    return target
