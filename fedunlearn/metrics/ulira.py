"""U-LiRA: a per-example likelihood-ratio attack telling unlearned models from retrained ones.

Paper: Hayes et al., "Inexact unlearning needs more careful evaluations to avoid a false
sense of privacy", SaTML 2025 (building on LiRA, Carlini et al., S&P 2022). For each
forget sample the statistic is the logit-scaled confidence of the true class,
log(p / (1 - p)), computed stably from the logits. With M unlearned models (trained on x,
then unlearned) and R retrained models (never trained on x), each held-out pair (one model
of each) is scored with Gaussians fitted to the remaining M - 1 and R - 1 models: the score
is log N(s; unlearned fit) - log N(s; retrained fit). All scores together give one ROC:
AUC 0.5 and TPR equal to the FPR mean the attack cannot tell the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import auc, roc_curve


@dataclass(frozen=True)
class UliraResult:
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float


def scaled_confidence(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """log(p_y / (1 - p_y)) = z_y - logsumexp(z_others); logits (..., n, k), labels (n,)."""
    z = torch.as_tensor(logits).double()
    y = torch.as_tensor(labels).long()
    index = y.view(*([1] * (z.dim() - 2)), -1, 1).expand(*z.shape[:-1], 1)
    correct = z.gather(-1, index).squeeze(-1)
    others = z.scatter(-1, index, float("-inf")).logsumexp(-1)
    return (correct - others).numpy()


def _log_normal(x: np.ndarray, mu: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / std) ** 2 - np.log(std)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR reached with FPR at most `target` (the ROC is a step curve)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def ulira_scores(unlearned: np.ndarray, retrained: np.ndarray, min_std: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """(scores, truth) over held-out pairs; inputs are statistics shaped (models, samples).

    Needs at least 3 models on each side (two to fit a spread, one held out)."""
    unlearned, retrained = np.asarray(unlearned, float), np.asarray(retrained, float)
    if unlearned.ndim != 2 or retrained.ndim != 2 or unlearned.shape[1] != retrained.shape[1]:
        raise ValueError(f"statistics must be (models, samples) with the same samples; got {unlearned.shape} and {retrained.shape}")
    pairs = min(len(unlearned), len(retrained))
    if pairs < 3:
        raise ValueError(f"U-LiRA needs at least 3 models on each side; got {len(unlearned)} and {len(retrained)}")
    scores, truth = [], []
    for i in range(pairs):
        rest_u, rest_r = np.delete(unlearned, i, 0), np.delete(retrained, i, 0)
        mu_u, sd_u = rest_u.mean(0), np.maximum(rest_u.std(0, ddof=1), min_std)
        mu_r, sd_r = rest_r.mean(0), np.maximum(rest_r.std(0, ddof=1), min_std)
        for target, label in ((unlearned[i], 1), (retrained[i], 0)):
            scores.append(_log_normal(target, mu_u, sd_u) - _log_normal(target, mu_r, sd_r))
            truth.append(np.full(target.shape, label))
    return np.concatenate(scores), np.concatenate(truth)


def ulira(unlearned: np.ndarray, retrained: np.ndarray, min_std: float = 1e-2) -> UliraResult:
    """AUC and TPR at 1% and 0.1% FPR of the attack; nan when any statistic is not finite."""
    if not (np.isfinite(unlearned).all() and np.isfinite(retrained).all()) or np.asarray(unlearned).shape[-1] == 0:
        return UliraResult(float("nan"), float("nan"), float("nan"))
    scores, truth = ulira_scores(unlearned, retrained, min_std)
    fpr, tpr, _ = roc_curve(truth, scores)
    return UliraResult(float(auc(fpr, tpr)), tpr_at_fpr(fpr, tpr, 0.01), tpr_at_fpr(fpr, tpr, 0.001))
