"""Retraining on the corrected data (the reference): the original recipe from the same initialisation."""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.contract import MethodResult
from fedunlearn.features_labels.task import FLTask
from fedunlearn.training import train


@dataclass(frozen=True)
class Config:
    pass


def unlearn(task: FLTask, cfg: Config = Config()):
    model = train(task.make_model(), task.data.after, task.train_cfg, task.device, seed=task.seed, progress=False)
    return MethodResult(model, {})
