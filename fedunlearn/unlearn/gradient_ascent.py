"""Gradient ascent (NegGrad; Thudi et al., EuroS&P 2022; Golatkar et al., CVPR 2020): climb the forget loss.

The original is trained further on the forget set only, with the sign of the cross-entropy
flipped, so that the forget samples' loss rises. Nothing anchors the retain set, which is
why the field reports it as the baseline that over-forgets; few steps and a small learning
rate keep the rest of the model usable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedunlearn.config import check_range
from fedunlearn.training import clone, loader, seed_everything
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    max_grad_norm: float = 5.0  # clip: the ascent loss is unbounded

    def __post_init__(self):
        check_range("epochs", self.epochs, 1)
        check_range("lr", self.lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("max_grad_norm", self.max_grad_norm, 0.0)


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    model = clone(task.original).to(task.device).train()
    seed_everything(task.seed + 31)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=task.train_cfg.momentum)
    steps = 0
    for _ in range(cfg.epochs):
        for x, y in loader(task.forget, cfg.batch_size, shuffle=True, seed=task.seed + 31 + steps):
            x, y = x.to(task.device), y.to(task.device)
            loss = -F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            steps += 1
    return model.eval(), Stats(epochs=cfg.epochs, steps=steps)
