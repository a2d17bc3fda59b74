"""nnU-Net's predictor plus voxel-wise uncertainty maps in the original image geometry.

:class:`UncertaintyPredictor` is ``nnUNetPredictor`` unchanged for the segmentations: the same sliding window,
Gaussian weighting, mirroring, ensembling of folds, resampling, crop undo and export, so without maps the files are
byte-identical to ``nnUNetv2_predict``'s. It wraps nnU-Net's preprocessing iterator: for each case, before nnU-Net
predicts it, it runs

- ``mc_samples`` passes with the MAPO dropout hooks on (rate ``dropout_rate``; injected into any nnU-Net network,
  so plain ``nnUNetTrainer`` models work too) per fold, and writes their predictive entropy and mutual information;
- with several folds, one pass per fold without dropout, and writes the folds' disagreement (the mutual information
  of the fold ensemble).

Each sample's logits go through nnU-Net's own ``convert_predicted_logits_to_segmentation_with_correct_shape``
(resampling to the original spacing, crop undo, transpose back) before the maps are computed
(:mod:`nnunetv2_mapo.method.uncertainty`), so the maps lie on the input image's grid. They are float32 NIfTI files
(``.nii.gz``, also for 2D inputs: PNG cannot hold floats) with the input's spacing, origin and direction, in
``<output folder>/uncertainty/<case>_<map>.nii.gz``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from torch._dynamo import OptimizedModule

from nnunetv2_mapo.method.dropout import find_injector, inject_dropout, unwrap
from nnunetv2_mapo.method.uncertainty import UncertaintyAccumulator

MAP_FOLDER = "uncertainty"
SUPPORTED_READERS = ("SimpleITKIO", "NibabelIO", "NaturalImage2DIO", "Tiff3DIO")


class UncertaintyInputError(ValueError):
    """Uncertainty maps cannot be made for this model or these settings."""


def map_path(output_folder: str, case: str, name: str) -> str:
    """``<output_folder>/uncertainty/<case>_<name>.nii.gz``."""
    return os.path.join(output_folder, MAP_FOLDER, f"{case}_{name}.nii.gz")


def write_float_map(array: np.ndarray, properties: dict, path: str) -> str:
    """Writes a float32 map that lies on an input image's grid, with that image's geometry.

    Args:
        array: The map in nnU-Net's array order for the image (as its reader returned it; 2D images as
            ``(1, y, x)``).
        properties: The reader's properties of the input image (``sitk_stuff``, ``nibabel_stuff`` or ``spacing``).
        path: A ``.nii.gz`` file; its folder is created.

    Returns:
        ``path``.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    array = np.asarray(array, dtype=np.float32)
    if "nibabel_stuff" in properties:
        import nibabel

        nibabel.save(nibabel.Nifti1Image(array.transpose((2, 1, 0)),
                                         affine=properties["nibabel_stuff"]["original_affine"]), path)
        return path
    if "sitk_stuff" in properties:
        geometry = properties["sitk_stuff"]
        if len(geometry["spacing"]) == 2:
            array = array[0]
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(geometry["spacing"])
        image.SetOrigin(geometry["origin"])
        image.SetDirection(geometry["direction"])
    else:  # readers that keep only the spacing (PNG, TIFF): array order (z, y, x), nnU-Net's 2D dummy axis first
        spacing = [float(s) for s in properties["spacing"]]
        if array.shape[0] == 1 and len(spacing) == 3:
            array, spacing = array[0], spacing[1:]
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing[::-1])
    sitk.WriteImage(image, path, True)
    return path


class UncertaintyPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that also writes uncertainty maps (see the module docstring).

    Args:
        mc_samples: Dropout passes per fold (0: no Monte-Carlo maps).
        dropout_rate: Rate of the injected dropout, in [0, 1).
        fold_disagreement: Write the folds' disagreement (needs several folds).
        seed: Seed of the dropout masks (the same seed gives the same maps).
        *args, **kwargs: ``nnUNetPredictor``'s.

    Raises:
        UncertaintyInputError: A rate outside [0, 1) or a negative sample count.
    """

    def __init__(self, *args, mc_samples: int = 0, dropout_rate: float = 0.1, fold_disagreement: bool = False,
                 seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 0:
            raise UncertaintyInputError(f"--mc-samples must be an integer >= 0, got {mc_samples!r}.")
        if not 0.0 <= dropout_rate < 1.0:
            raise UncertaintyInputError(f"--mc-dropout-rate must lie in [0, 1), got {dropout_rate!r}.")
        self.mc_samples = mc_samples
        self.dropout_rate = float(dropout_rate)
        self.fold_disagreement = fold_disagreement
        self.seed = seed

    @property
    def writes_maps(self) -> bool:
        return self.mc_samples > 0 or self.fold_disagreement

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds, checkpoint_name: str
                                             = "checkpoint_final.pth") -> None:
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        reader = self.plans_manager.plans.get("image_reader_writer", "")
        if self.writes_maps and reader not in SUPPORTED_READERS:
            raise UncertaintyInputError(
                f"Uncertainty maps are written for datasets read with {list(SUPPORTED_READERS)}; this model's plans "
                f"use {reader!r} (reoriented readers would need the reorientation undone). Predict without "
                f"--mc-samples/--fold-disagreement, or convert the dataset to one of those readers.")
        if self.fold_disagreement and len(self.list_of_parameters) < 2:
            raise UncertaintyInputError("--fold-disagreement needs several folds (-f 0 1 2 3 4).")
        try:
            find_injector(self.network)  # MAPO networks carry the hooks already
        except RuntimeError:
            inject_dropout(unwrap(self.network))  # plain nnU-Net networks: parameters and outputs unchanged

    def _internal_get_data_iterator_from_lists_of_filenames(self, *args, **kwargs):
        iterator = super()._internal_get_data_iterator_from_lists_of_filenames(*args, **kwargs)
        return self._with_maps(iterator) if self.writes_maps else iterator

    def _with_maps(self, iterator) -> Iterator[dict]:
        for item in iterator:
            data = item["data"]
            if isinstance(data, str):  # nnU-Net's workers hand large cases over as temporary .npy files
                path, data = data, torch.from_numpy(np.load(data))
                os.remove(path)
                item = {**item, "data": data}
            if item["ofile"] is not None:
                self.write_maps(data, item["data_properties"], item["ofile"])
            yield item

    def _load_fold(self, parameters: dict) -> None:
        network = self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network
        network.load_state_dict(parameters)

    def _probabilities(self, data: torch.Tensor, properties: dict) -> np.ndarray:
        logits = self.predict_sliding_window_return_logits(data).to("cpu")
        _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, properties, True)
        return probabilities

    def uncertainty_maps(self, data: torch.Tensor, properties: dict) -> dict[str, np.ndarray]:
        """The maps of one preprocessed case, on the original image grid.

        Args:
            data: The preprocessed case ``(C, *spatial)``, as nnU-Net's preprocessing yields it.
            properties: Its preprocessing properties.

        Returns:
            ``entropy`` and ``mutual_information`` (with ``mc_samples > 0``) and ``fold_disagreement`` (with
            ``fold_disagreement``), each in the input image's array layout.
        """
        regions = self.label_manager.has_regions
        samples, folds = UncertaintyAccumulator(regions), UncertaintyAccumulator(regions)
        injector = find_injector(self.network)
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        for parameters in self.list_of_parameters:
            self._load_fold(parameters)
            if self.fold_disagreement:
                folds.add(self._probabilities(data, properties))
            for _ in range(self.mc_samples):
                with injector.sampling([self.dropout_rate], generator):
                    samples.add(self._probabilities(data, properties))
        maps = {}
        if self.mc_samples:
            maps["entropy"] = samples.predictive_entropy()
            maps["mutual_information"] = samples.mutual_information()
        if self.fold_disagreement:
            maps["fold_disagreement"] = folds.mutual_information()
        return maps

    def write_maps(self, data: torch.Tensor, properties: dict, output_file_truncated: str) -> list[str]:
        """Computes and writes the maps of one case beside its segmentation (``uncertainty/`` sub-folder)."""
        folder, case = os.path.split(output_file_truncated)
        return [write_float_map(value, properties, map_path(folder, case, name))
                for name, value in self.uncertainty_maps(data, properties).items()]
