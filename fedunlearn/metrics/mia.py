"""Membership inference on the forget set, as in SalUn and "Model Sparsity" (Jia et al. 2023).

An RBF SVC learns to tell members (retain samples) from non-members (test samples) by a
per-sample feature of the model's output. Applied to the forget set, the share it calls
non-member is the MIA efficacy (higher = better forgotten). The AUC scores forget samples
against held-out test samples the attack never saw: 0.5 means the forget set looks unseen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

Feature = Literal["confidence", "entropy", "loss"]

log = logging.getLogger("fedunlearn")


@dataclass(frozen=True)
class MiaResult:
    efficacy: float  # share of forget samples predicted non-member
    auc: float       # member score, forget vs held-out test


def sample_feature(probs: torch.Tensor, labels: torch.Tensor, kind: Feature = "confidence") -> np.ndarray:
    p = probs.clamp_min(1e-12)
    if kind == "confidence":
        feat = p.gather(1, labels.view(-1, 1)).squeeze(1)
    elif kind == "entropy":
        feat = -(p * p.log()).sum(1)
    elif kind == "loss":
        feat = -p.gather(1, labels.view(-1, 1)).squeeze(1).log()
    else:
        raise ValueError(f"unknown MIA feature '{kind}'; valid: confidence, entropy, loss")
    return feat.double().numpy().reshape(-1, 1)


def svc_mia(retain: np.ndarray, test: np.ndarray, forget: np.ndarray, seed: int = 0,
            max_per_class: int = 2000) -> MiaResult:
    """Features are (n, d) arrays. Half the test set trains the attack, the other half scores the AUC.

    A model whose outputs are not finite (it diverged) gets nan for both, with a warning: one
    broken method must not cost the report of every other."""
    if not all(np.isfinite(a).all() for a in (retain, test, forget)):
        log.warning("the model's outputs are not finite (NaN or inf); its MIA is reported as nan")
        return MiaResult(float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    test = test[rng.permutation(len(test))]
    half = len(test) // 2
    train_nonmember, heldout = test[:half], test[half:]
    n = min(len(retain), len(train_nonmember), max_per_class)
    members = retain[rng.choice(len(retain), size=n, replace=False)]
    nonmembers = train_nonmember[rng.choice(len(train_nonmember), size=n, replace=False)]
    x = np.concatenate([members, nonmembers])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    attack = SVC(C=3.0, gamma="auto", kernel="rbf").fit(x, y)
    efficacy = float(1.0 - attack.predict(forget).mean())
    scores = attack.decision_function(np.concatenate([forget, heldout]))
    truth = np.concatenate([np.ones(len(forget)), np.zeros(len(heldout))])
    return MiaResult(efficacy, float(roc_auc_score(truth, scores)))
