"""Voxel-wise uncertainty from several probability maps (Monte-Carlo dropout samples, or the folds of an ensemble).

With p_t the probabilities of sample t (T samples, classes c) and p = mean_t p_t:

- predictive entropy ``H[p] = -sum_c p_c log p_c`` (total uncertainty, in nats);
- expected entropy ``E_t H[p_t]`` (the aleatoric part);
- mutual information ``MI = H[p] - E_t H[p_t] >= 0`` (the epistemic part: how much the samples disagree).

For region-based (sigmoid) outputs each region is a Bernoulli variable and the entropies are summed over regions.
Samples are added one at a time, so memory stays at two maps whatever T is.
"""

from __future__ import annotations

import numpy as np


def entropy(probabilities: np.ndarray, regions: bool = False) -> np.ndarray:
    """Entropy per voxel, in nats.

    Args:
        probabilities: ``(C, *spatial)``: class probabilities summing to 1 over C, or (``regions``) independent
            per-region probabilities.
        regions: Bernoulli entropy per channel, summed over channels.

    Returns:
        ``(*spatial)`` float64.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    if regions:
        return -(_p_log_p(p) + _p_log_p(1.0 - p)).sum(axis=0)
    return -_p_log_p(p).sum(axis=0)


def _p_log_p(p: np.ndarray) -> np.ndarray:
    """``p log p`` with its limit 0 at p = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p), 0.0)


class UncertaintyAccumulator:
    """Running sums of probabilities and of their entropies over samples.

    Args:
        regions: Whether the probabilities are per-region sigmoids (see :func:`entropy`).
    """

    def __init__(self, regions: bool = False) -> None:
        self.regions = regions
        self.count = 0
        self._sum_probabilities: np.ndarray | None = None
        self._sum_entropy: np.ndarray | None = None

    def add(self, probabilities: np.ndarray) -> None:
        """Adds one sample ``(C, *spatial)``.

        Raises:
            ValueError: The shape differs from the earlier samples'.
        """
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self._sum_probabilities is None:
            self._sum_probabilities = np.zeros_like(probabilities)
            self._sum_entropy = np.zeros(probabilities.shape[1:])
        elif probabilities.shape != self._sum_probabilities.shape:
            raise ValueError(f"Sample of shape {probabilities.shape} does not match the earlier samples' "
                             f"{self._sum_probabilities.shape}.")
        self._sum_probabilities += probabilities
        self._sum_entropy += entropy(probabilities, self.regions)
        self.count += 1

    def _check(self) -> None:
        if self.count == 0:
            raise ValueError("No sample was added.")

    def mean_probabilities(self) -> np.ndarray:
        """``p``, the mean of the samples."""
        self._check()
        return self._sum_probabilities / self.count

    def predictive_entropy(self) -> np.ndarray:
        """``H[p]`` per voxel."""
        return entropy(self.mean_probabilities(), self.regions)

    def mutual_information(self) -> np.ndarray:
        """``H[p] - E_t H[p_t]`` per voxel, >= 0 (rounding below 0 is clipped)."""
        self._check()
        return np.maximum(self.predictive_entropy() - self._sum_entropy / self.count, 0.0)
