"""NegGrad+ (Kurmanji et al., 2023): descend on retain batches while ascending on forget batches.

Loss = alpha * CE(retain) - (1 - alpha) * CE(forget), one forget batch per retain batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from fedunlearn.training import TrainConfig, clone, cycle, loader, make_optimizer, progress_bar, seed_everything
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 128
    alpha: float = 0.95  # weight of the retain term; (1 - alpha) weighs the ascent on forget


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    model = clone(task.original).to(task.device).train()
    seed_everything(task.seed + 3)
    retain = loader(task.retain, cfg.batch_size, shuffle=True, seed=task.seed)
    forget = cycle(loader(task.forget, cfg.batch_size, shuffle=True, seed=task.seed))
    recipe = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, momentum=task.train_cfg.momentum,
                         weight_decay=task.train_cfg.weight_decay)
    opt, sched = make_optimizer(model, recipe, cfg.epochs * len(retain))
    for _ in progress_bar(range(cfg.epochs), "neggrad_plus"):
        for xr, yr in retain:
            xf, yf = next(forget)
            xr, yr, xf, yf = xr.to(task.device), yr.to(task.device), xf.to(task.device), yf.to(task.device)
            loss = cfg.alpha * F.cross_entropy(model(xr), yr) - (1 - cfg.alpha) * F.cross_entropy(model(xf), yf)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval(), Stats(epochs=cfg.epochs)
