"""Feature and label correction requests, and what every feature/label method receives.

A request names a seeded share of the training samples and corrects them:
- labels: the original was trained with these samples' labels flipped to a random other class
  (mislabelled data); the request restores the true labels;
- features: the request zeroes a pixel block (rows r0..r0+h, columns c0..c0+w) of these samples,
  e.g. a region that leaked private information.
The original is trained on the data before the request; retraining on the data after it is the
reference. A method gets both versions of the affected samples only (Warnecke et al.'s Z and Z~)
plus the corrected training set, which second-order updates need for the Hessian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.config import check_range
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.errors import DataError
from fedunlearn.training import TrainConfig


@dataclass(frozen=True)
class FLRequestConfig:
    name: str = ""
    kind: Literal["labels", "features"] = "labels"
    fraction: float = 0.05                  # share of the training samples the request corrects
    region: tuple[int, ...] = (0, 0, 4, 4)  # features: (row, column, height, width) of the zeroed block

    def __post_init__(self):
        check_range("fraction", self.fraction, 0.0, 1.0)
        if len(self.region) != 4 or min(self.region) < 0 or self.region[2] < 1 or self.region[3] < 1:
            raise ValueError("'region' must be [row, column, height, width] with height, width >= 1; "
                             f"got {self.region}")


@dataclass
class FLData:
    before: ArrayDataset      # what the original was trained on
    after: ArrayDataset       # the corrected training set
    affected: np.ndarray      # positions the request corrects


def make_request(clean: ArrayDataset, cfg: FLRequestConfig, num_classes: int, seed: int) -> FLData:
    n = len(clean)
    count = int(round(cfg.fraction * n))
    if count == 0:
        raise DataError(f"fraction={cfg.fraction} of {n} training samples corrects nothing; choose a larger one")
    rng = np.random.default_rng(seed + 29)
    affected = np.sort(rng.choice(n, count, replace=False))
    idx = torch.as_tensor(affected)
    if cfg.kind == "labels":
        wrong = clean.y.clone()
        wrong[idx] = (clean.y[idx] + torch.as_tensor(rng.integers(1, num_classes, count))) % num_classes
        return FLData(ArrayDataset(clean.x, wrong), clean, affected)
    r, c, h, w = cfg.region
    if r + h > clean.x.shape[-2] or c + w > clean.x.shape[-1]:
        raise DataError(f"region {list(cfg.region)} does not fit {tuple(clean.x.shape[-2:])} images")
    x = clean.x.clone()
    x[idx, ..., r:r + h, c:c + w] = 0.0
    return FLData(clean, ArrayDataset(x, clean.y), affected)


@dataclass
class FLTask:
    """What a feature/label method's `unlearn(task, cfg)` receives (fedunlearn.contract); it
    answers a MethodResult."""

    original: nn.Module
    data: FLData
    train_cfg: TrainConfig
    make_model: Callable[[], nn.Module]
    device: torch.device
    seed: int = 0


def objective(model: nn.Module, data: ArrayDataset, wd: float, batch: int = 2048) -> torch.Tensor:
    """Mean cross-entropy plus the L2 term SGD's weight decay applies: the training objective."""
    n = len(data)
    loss = sum(F.cross_entropy(model(data.x[i:i + batch]), data.y[i:i + batch], reduction="sum")
               for i in range(0, n, batch)) / n
    return loss + wd / 2 * sum((p ** 2).sum() for p in model.parameters())


def affected_loss_change(model: nn.Module, task: FLTask) -> torch.Tensor:
    """sum over the affected samples of loss(corrected) - loss(original), divided by n (mean units)."""
    idx = torch.as_tensor(task.data.affected)
    old, new = task.data.before.subset(idx), task.data.after.subset(idx)
    return (F.cross_entropy(model(new.x), new.y, reduction="sum")
            - F.cross_entropy(model(old.x), old.y, reduction="sum")) / len(task.data.after)
