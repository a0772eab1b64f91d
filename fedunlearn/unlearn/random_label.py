"""Random labels (Golatkar et al. 2020; the SalUn baseline): relabel forget samples at random, fine-tune.

Each forget sample gets a label drawn uniformly from the other classes; the model is then
fine-tuned on retain + relabelled forget samples so the retain set anchors what must stay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.training import TrainConfig, clone, train
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 128
    with_retain: bool = True  # fine-tune on retain + relabelled forget; false = relabelled forget only


def relabel(y: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, y.shape, generator=gen)  # never the true label
    return (y + shift) % num_classes


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    model = clone(task.original)
    relabelled = ArrayDataset(task.forget.x, relabel(task.forget.y, task.num_classes, task.seed))
    data = ArrayDataset.concat(task.retain, relabelled) if cfg.with_retain else relabelled
    recipe = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                         momentum=task.train_cfg.momentum, weight_decay=task.train_cfg.weight_decay)
    train(model, data, recipe, task.device, seed=task.seed + 4, desc="random_label")
    return model, Stats(epochs=cfg.epochs, samples=len(data))
