"""Which training samples a deletion request names: a random fraction, whole classes, or indices.

`subpopulation` and `atypical` depend on a trained model; fedunlearn.data.forget_model selects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedunlearn.config import check_range
from fedunlearn.errors import DataError


@dataclass(frozen=True)
class ForgetConfig:
    kind: Literal["random", "class", "indices", "subpopulation", "atypical"] = "random"
    fraction: float = 0.1          # kind = "random" / "atypical": share of the training set to forget
    classes: tuple[int, ...] = ()  # kind = "class": every training sample of these labels;
                                   # "subpopulation": the class to cluster (first; empty = a seeded pick)
    indices: tuple[int, ...] = ()  # kind = "indices": explicit training-set positions
    clusters: int = 5              # kind = "subpopulation": k-means clusters of the class's features
    cluster: int = -1              # kind = "subpopulation": which cluster (by label); -1 = a seeded pick
    size: int = 0                  # kind = "subpopulation": forget the `size` samples of the class nearest the
                                   # chosen cluster's centre (a ball in feature space); 0 = the cluster itself

    def __post_init__(self):
        check_range("forget.fraction", self.fraction, 0.0, 1.0)
        check_range("forget.clusters", self.clusters, 2)
        check_range("forget.cluster", self.cluster, -1, self.clusters - 1)
        check_range("forget.size", self.size, 0)


def select_forget(labels: np.ndarray, cfg: ForgetConfig, seed: int) -> np.ndarray:
    """Sorted, unique training indices to forget; raises DataError on an impossible request."""
    n = len(labels)
    if cfg.kind in ("subpopulation", "atypical"):
        raise DataError(f"forget.kind = '{cfg.kind}' depends on a trained model; select it with "
                        "fedunlearn.data.forget_model.select_forget_for")
    if cfg.kind == "random":
        count = int(round(cfg.fraction * n))
        if count == 0 or count >= n:
            raise DataError(f"forget.fraction={cfg.fraction} selects {count} of {n} samples; choose a value that leaves both sets non-empty")
        return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    if cfg.kind == "class":
        if not cfg.classes:
            raise DataError("forget.kind = 'class' needs forget.classes, e.g. classes = [0]")
        present = set(np.unique(labels).tolist())
        missing = [c for c in cfg.classes if c not in present]
        if missing:
            raise DataError(f"forget.classes {missing} do not occur in the training labels {sorted(present)}")
        if present <= set(cfg.classes):
            raise DataError(f"forget.classes {sorted(set(cfg.classes))} names every class of the training set; "
                            "nothing would remain to train on: leave at least one class out")
        return np.flatnonzero(np.isin(labels, cfg.classes))
    if not cfg.indices:
        raise DataError("forget.kind = 'indices' needs forget.indices, e.g. indices = [0, 5, 17]")
    # Checked as Python ints: a huge index would overflow int64 before a range check could see it.
    bad = [i for i in cfg.indices if not 0 <= i < n]
    if bad:
        raise DataError(f"forget.indices {bad[:5]} out of range: the training set has {n} samples (valid 0..{n - 1})")
    idx = np.asarray(cfg.indices, dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise DataError("forget.indices contains duplicates")
    if len(idx) >= n:
        raise DataError("forget.indices names every training sample; nothing would remain to train on")
    return np.sort(idx)


def complement(n: int, forget: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[forget] = False
    return np.flatnonzero(mask)
