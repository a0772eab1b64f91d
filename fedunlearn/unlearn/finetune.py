"""Fine-tune the original on the retain set only (catastrophic forgetting as unlearning)."""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.training import TrainConfig, clone, train
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 128


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    model = clone(task.original)
    recipe = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                         momentum=task.train_cfg.momentum, weight_decay=task.train_cfg.weight_decay)
    train(model, task.retain, recipe, task.device, seed=task.seed + 2, desc="finetune")
    return model, Stats(epochs=cfg.epochs)
