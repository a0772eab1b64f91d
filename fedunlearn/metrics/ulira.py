"""U-LiRA: a per-example likelihood-ratio attack telling unlearned models from retrained ones.

Paper: Hayes et al., "Inexact unlearning needs more careful evaluations to avoid a false
sense of privacy", SaTML 2025 (building on LiRA, Carlini et al., S&P 2022). For each
forget sample the statistic is the logit-scaled confidence of the true class,
log(p / (1 - p)), computed stably from the logits. With M unlearned models (trained on x,
then unlearned) and R retrained models (never trained on x), each held-out pair (one model
of each, every such pair) is scored with Gaussians fitted to the remaining M - 1 and R - 1 models: the score
is log N(s; unlearned fit) - log N(s; retrained fit). Each pair's scores over the samples
give one ROC; AUC and TPRs are averaged over the pairs. AUC 0.5 and TPR equal to the FPR
mean the attack cannot tell the two apart.
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


def calibrated(stats: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Each model's statistics minus that model's offset: `offsets` (models, samples or 1), by
    default the model's mean over these same samples.

    A model's outputs move together (one seed is a little more confident everywhere, or on a
    class it never saw); with a few models, that model-wide offset decides a pair's ROC on its
    own and the noise floor swings. Removing it leaves the per-example pattern. Estimated on the
    audited samples themselves, the offset also removes any signal the forget set shares as a
    whole (a subpopulation the model memorised together): `reference_offsets` estimates it on
    samples no model trained on instead."""
    stats = np.asarray(stats, float)
    return stats - (stats.mean(1, keepdims=True) if offsets is None else np.asarray(offsets, float))


def reference_offsets(reference: np.ndarray, reference_labels, labels) -> np.ndarray:
    """Per model and audited sample: the model's mean statistic over reference samples (held
    out from every model's training, e.g. the validation split) of that sample's class; over
    all reference samples for a class the reference lacks. `reference` is (models, m)."""
    reference = np.asarray(reference, float)
    ref_y, y = np.asarray(reference_labels), np.asarray(labels)
    overall = reference.mean(1)
    per_class = {c: reference[:, ref_y == c].mean(1) if (ref_y == c).any() else overall for c in np.unique(y)}
    return np.stack([per_class[c] for c in y], 1) if len(y) else np.empty((len(reference), 0))


def _log_normal(x: np.ndarray, mu: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / std) ** 2 - np.log(std)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR reached with FPR at most `target` (the ROC is a step curve)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def _spread(rest: np.ndarray, variance: str, min_std: float) -> np.ndarray:
    per_example = rest.std(0, ddof=1)
    if variance == "global":
        # One spread per side, pooled over samples (LiRA's "fixed variance", advised for few
        # models): a spread fitted on a handful of models per sample is itself noise.
        per_example = np.full_like(per_example, np.sqrt(np.mean(per_example ** 2)))
    elif variance != "per_example":
        raise ValueError(f"unknown U-LiRA variance '{variance}'; valid: global, per_example")
    return np.maximum(per_example, min_std)


def ulira_scores(unlearned: np.ndarray, retrained: np.ndarray, min_std: float = 1e-2,
                 variance: str = "global") -> list[tuple[np.ndarray, np.ndarray]]:
    """Per held-out pair (i, j): (scores, truth) of unlearned model i and retrained model j on
    every sample, under Gaussians fitted to the other models; inputs are statistics (models,
    samples). Every pair is used: more pairs average over more of the models' own variation.

    Needs at least 3 models on each side (two to fit a spread, one held out)."""
    unlearned, retrained = np.asarray(unlearned, float), np.asarray(retrained, float)
    if unlearned.ndim != 2 or retrained.ndim != 2 or unlearned.shape[1] != retrained.shape[1]:
        raise ValueError(f"statistics must be (models, samples) with the same samples; got {unlearned.shape} and {retrained.shape}")
    if min(len(unlearned), len(retrained)) < 3:
        raise ValueError(f"U-LiRA needs at least 3 models on each side; got {len(unlearned)} and {len(retrained)}")
    fits_u = [_fit(np.delete(unlearned, i, 0), variance, min_std) for i in range(len(unlearned))]
    fits_r = [_fit(np.delete(retrained, j, 0), variance, min_std) for j in range(len(retrained))]
    truth = np.concatenate([np.ones(unlearned.shape[1]), np.zeros(retrained.shape[1])])
    out = []
    for i, (mu_u, sd_u) in enumerate(fits_u):
        for j, (mu_r, sd_r) in enumerate(fits_r):
            score = lambda s: _log_normal(s, mu_u, sd_u) - _log_normal(s, mu_r, sd_r)  # noqa: E731
            out.append((np.concatenate([score(unlearned[i]), score(retrained[j])]), truth))
    return out


def _fit(rest: np.ndarray, variance: str, min_std: float) -> tuple[np.ndarray, np.ndarray]:
    return rest.mean(0), _spread(rest, variance, min_std)


def ulira(unlearned: np.ndarray, retrained: np.ndarray, min_std: float = 1e-2, variance: str = "global",
          calibrate: bool = True, offsets: tuple[np.ndarray, np.ndarray] | None = None) -> UliraResult:
    """AUC and TPR at 1% and 0.1% FPR, each the mean over held-out pairs; nan when any statistic
    is not finite.

    Each pair gets its own ROC: within a pair both targets are independent of both fits, so
    under "indistinguishable" their scores are exchangeable and the AUC is 0.5 in expectation. Pooling
    scores across pairs is not: a model's outputs shift together on every sample, and a model
    left out of its own side's fit drags that fit away from itself, which pooled over a few
    models reads as a systematic (below-chance) signal. With `calibrate`, each side's model
    offsets are removed first: `offsets` = (unlearned's, retrained's), e.g. from
    reference_offsets; None = each model's mean over the audited samples."""
    if not (np.isfinite(unlearned).all() and np.isfinite(retrained).all()) or np.asarray(unlearned).shape[-1] == 0:
        return UliraResult(float("nan"), float("nan"), float("nan"))
    if calibrate:
        off_u, off_r = offsets if offsets is not None else (None, None)
        unlearned, retrained = calibrated(unlearned, off_u), calibrated(retrained, off_r)
    per_pair = []
    for scores, truth in ulira_scores(unlearned, retrained, min_std, variance):
        fpr, tpr, _ = roc_curve(truth, scores)
        per_pair.append((auc(fpr, tpr), tpr_at_fpr(fpr, tpr, 0.01), tpr_at_fpr(fpr, tpr, 0.001)))
    mean = np.mean(per_pair, axis=0)
    return UliraResult(float(mean[0]), float(mean[1]), float(mean[2]))


def null_aucs(first: np.ndarray, second: np.ndarray, draws: int = 20, seed: int = 0,
              offsets: tuple[np.ndarray, np.ndarray] | None = None, **kw) -> np.ndarray:
    """U-LiRA AUCs of random equal splits of two ensembles drawn from the same law (two retrain
    ensembles): what the AUC of an ensemble as good as retraining scatters over, with these
    models and samples. One split is one noise-floor value; their spread says how far from
    0.5 a method's AUC may lie by chance."""
    stats = np.concatenate([np.asarray(first, float), np.asarray(second, float)])
    offs = np.concatenate([np.asarray(o, float) for o in offsets]) if offsets is not None else None
    half, rng, out = len(first), np.random.default_rng(seed), []
    for _ in range(draws):
        p = rng.permutation(len(stats))
        a, b = p[:half], p[half:]
        pair = (offs[a], offs[b]) if offs is not None else None
        out.append(ulira(stats[a], stats[b], offsets=pair, **kw).auc)
    return np.asarray(out)
