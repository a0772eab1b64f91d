"""Fine-tuning on the corrected data (baseline): the original recipe's optimiser for a few epochs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fedunlearn.config import check_range
from fedunlearn.contract import MethodResult
from fedunlearn.features_labels.task import FLTask
from fedunlearn.training import clone, train


@dataclass(frozen=True)
class Config:
    epochs: int = 1
    lr_scale: float = 0.1

    def __post_init__(self):
        check_range("epochs", self.epochs, 1)
        check_range("lr_scale", self.lr_scale, 0.0)


def unlearn(task: FLTask, cfg: Config = Config()):
    recipe = dataclasses.replace(task.train_cfg, epochs=cfg.epochs, lr=task.train_cfg.lr * cfg.lr_scale)
    model = train(clone(task.original), task.data.after, recipe, task.device, seed=task.seed + 1, progress=False)
    return MethodResult(model, {})
