"""l1-sparse fine-tuning (Jia et al., "Model sparsity can simplify machine unlearning", NeurIPS 2023).

The original is fine-tuned on the retain set with cross-entropy plus gamma_t * ||theta||_1,
where gamma_t decays linearly from `alpha` to 0 over the run: sparsity is pushed early,
accuracy recovered late. The sparser model carries less of what it memorised about the
forget set, so fine-tuning forgets more than it would on the dense model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedunlearn.config import check_range
from fedunlearn.training import TrainConfig, clone, loader, make_optimizer, seed_everything
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 128
    # Initial weight of the l1 penalty (the paper's gamma), decayed linearly to 0. Larger than the
    # paper's 5e-5..5e-4: its runs take thousands of steps, these a few hundred. A penalty weight,
    # not a share: `fedunlearn tune` searches it log-uniformly from the paper's range up.
    alpha: float = field(default=0.01, metadata={"search": ("loguniform", 1e-4, 1e-1)})

    def __post_init__(self):
        check_range("epochs", self.epochs, 1)
        check_range("lr", self.lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("alpha", self.alpha, 0.0)


def l1_norm(model: torch.nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for p in model.parameters())


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    model = clone(task.original).to(task.device).train()
    seed_everything(task.seed + 37)
    batches = loader(task.retain, cfg.batch_size, shuffle=True, seed=task.seed + 37)
    total = cfg.epochs * len(batches)
    recipe = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, momentum=task.train_cfg.momentum,
                         weight_decay=task.train_cfg.weight_decay)
    opt, sched = make_optimizer(model, recipe, total)
    step = 0
    for _ in range(cfg.epochs):
        for x, y in batches:
            x, y = x.to(task.device), y.to(task.device)
            gamma = cfg.alpha * (1 - step / total)
            loss = F.cross_entropy(model(x), y) + gamma * l1_norm(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return model.eval(), Stats(epochs=cfg.epochs, l1_norm=float(l1_norm(model).detach()))
