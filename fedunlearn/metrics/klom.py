"""KLoM: KL divergence of margins between an unlearned ensemble and a retrained ensemble.

Paper: Georgiev et al., "Attribute-to-delete: machine unlearning via datamodel matching",
ICLR 2025. For each sample, the margin (correct-class logit minus the largest other logit)
is computed under each of the unlearned models and each of the retrained models; the KL
divergence between the two margin distributions is taken per sample (on bins shared by
both ensembles, or between Gaussian fits), and the 95th percentile over a set of samples
is reported. 0 means the unlearned models look exactly like retrained ones.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Fit = Literal["gaussian", "bins"]


def margins(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Correct-class logit minus the largest other logit; logits (..., n, k), labels (n,)."""
    z = torch.as_tensor(logits).double()
    y = torch.as_tensor(labels).long()
    index = y.view(*([1] * (z.dim() - 2)), -1, 1).expand(*z.shape[:-1], 1)
    correct = z.gather(-1, index).squeeze(-1)
    others = z.scatter(-1, index, float("-inf")).amax(-1)
    return (correct - others).numpy()


def gaussian_kl(a: np.ndarray, b: np.ndarray, min_std: float = 1e-2) -> np.ndarray:
    """Per column KL(N(a) || N(b)) between Gaussians fitted to the rows of a (m, n) and b (k, n).

    `min_std` keeps identical or deterministic ensembles (zero spread) finite."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa = np.maximum(a.std(0, ddof=1) if len(a) > 1 else 0.0, min_std)
    sb = np.maximum(b.std(0, ddof=1) if len(b) > 1 else 0.0, min_std)
    return np.log(sb / sa) + (sa ** 2 + (mu_a - mu_b) ** 2) / (2 * sb ** 2) - 0.5


def binned_kl(a: np.ndarray, b: np.ndarray, bins: int = 10, smoothing: float = 0.5) -> np.ndarray:
    """Per column KL between histograms of a (m, n) and b (k, n) on bins spanning both columns.

    Add-`smoothing` counts keep empty bins finite (with few models most bins are empty)."""
    out = np.empty(a.shape[1])
    for j in range(a.shape[1]):
        lo, hi = min(a[:, j].min(), b[:, j].min()), max(a[:, j].max(), b[:, j].max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        p = np.histogram(a[:, j], edges)[0] + smoothing
        q = np.histogram(b[:, j], edges)[0] + smoothing
        p, q = p / p.sum(), q / q.sum()
        out[j] = float((p * np.log(p / q)).sum())
    return out


def klom_per_sample(unlearned: np.ndarray, retrained: np.ndarray, fit: Fit = "gaussian", bins: int = 10) -> np.ndarray:
    """KL per sample between margin arrays shaped (models, samples)."""
    unlearned, retrained = np.asarray(unlearned, float), np.asarray(retrained, float)
    if unlearned.ndim != 2 or retrained.ndim != 2 or unlearned.shape[1] != retrained.shape[1]:
        raise ValueError(f"margins must be (models, samples) with the same samples; got {unlearned.shape} and {retrained.shape}")
    if fit == "gaussian":
        return gaussian_kl(unlearned, retrained)
    if fit == "bins":
        return binned_kl(unlearned, retrained, bins)
    raise ValueError(f"unknown KLoM fit '{fit}'; valid: gaussian, bins")


def klom(unlearned: np.ndarray, retrained: np.ndarray, fit: Fit = "gaussian", bins: int = 10,
         percentile: float = 95.0) -> float:
    """The `percentile` of per-sample KL over the samples; nan when there are none or any is not finite."""
    if np.asarray(unlearned).size == 0 or np.asarray(unlearned).shape[-1] == 0:
        return float("nan")
    if not (np.isfinite(unlearned).all() and np.isfinite(retrained).all()):
        return float("nan")
    return float(np.percentile(klom_per_sample(unlearned, retrained, fit, bins), percentile))
