"""Retrain from scratch on the retain set with the original recipe: the reference (exact unlearning)."""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.training import train
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    pass  # deliberately nothing: the recipe is the original's, or speedups would be dishonest


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    model = task.make_model()
    train(model, task.retain, task.train_cfg, task.device, seed=task.seed + 1, desc="retrain")
    return model, Stats(epochs=task.train_cfg.epochs, samples=len(task.retain))
