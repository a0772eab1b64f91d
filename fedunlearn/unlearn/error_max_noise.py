"""UNSIR (Tarun, Chundawat, Mandal, Kankanhalli, IEEE TNNLS 2023): error-maximizing noise, impair, repair.

1. Noise: for each forgotten class c, a batch of learnable inputs N is optimised against the
   frozen original to maximise its loss on label c, with an L2 penalty keeping N bounded:
   minimise  -CE(model(N), c) + reg * mean ||N||^2.
2. Impair: one pass of high-learning-rate SGD over the noise (labelled c) mixed with a small
   sample of the retain set, which destroys the weights that served class c.
3. Repair: one pass over the retain sample alone at a lower rate, which restores the rest.
Only a small retain sample is used (retain_per_class samples of each remaining class). The
method targets class forgetting; on a random forget set it learns noise for every label present,
which impairs all classes, and the repair step has to win them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedunlearn.config import check_range
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.training import TrainConfig, clone, train
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    noise_samples: int = 256    # noise inputs per forgotten class
    noise_steps: int = 100
    noise_lr: float = 0.1
    noise_reg: float = 0.1      # weight of the L2 penalty on the noise
    retain_per_class: int = 200
    impair_lr: float = 0.02
    repair_lr: float = 0.01
    batch_size: int = 128

    def __post_init__(self):
        for name in ("noise_samples", "noise_steps", "retain_per_class", "batch_size"):
            check_range(name, getattr(self, name), 1)
        for name in ("noise_lr", "noise_reg", "impair_lr", "repair_lr"):
            check_range(name, getattr(self, name), 0.0)


def error_maximizing_noise(model, label: int, shape, cfg: Config, device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((cfg.noise_samples, *shape), generator=gen).to(device).requires_grad_(True)
    target = torch.full((cfg.noise_samples,), label, device=device)
    opt = torch.optim.Adam([noise], lr=cfg.noise_lr)
    for _ in range(cfg.noise_steps):
        loss = -F.cross_entropy(model(noise), target) + cfg.noise_reg * noise.pow(2).flatten(1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return noise.detach().cpu()


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    device = task.device
    frozen = clone(task.original).to(device).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    labels = sorted(set(task.forget.y.tolist()))
    shape = tuple(task.forget.x.shape[1:])
    noise = [error_maximizing_noise(frozen, c, shape, cfg, device, task.seed + 29 + c) for c in labels]
    noise_set = ArrayDataset(torch.cat(noise), torch.cat([torch.full((cfg.noise_samples,), c) for c in labels]))

    gen = torch.Generator().manual_seed(task.seed + 31)
    picks = []
    for c in sorted(set(task.retain.y.tolist())):
        idx = torch.nonzero(task.retain.y == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:cfg.retain_per_class]])
    retain_sample = task.retain.subset(torch.cat(picks))

    model = clone(task.original)
    recipe = task.train_cfg
    impair = TrainConfig(epochs=1, batch_size=cfg.batch_size, lr=cfg.impair_lr, momentum=recipe.momentum,
                         weight_decay=recipe.weight_decay, schedule="constant")
    train(model, ArrayDataset.concat(noise_set, retain_sample), impair, device, seed=task.seed + 37, desc="impair",
          progress=False)
    repair = TrainConfig(epochs=1, batch_size=cfg.batch_size, lr=cfg.repair_lr, momentum=recipe.momentum,
                         weight_decay=recipe.weight_decay, schedule="constant")
    train(model, retain_sample, repair, device, seed=task.seed + 41, desc="repair", progress=False)
    return model.eval(), Stats(noise_classes=labels, retain_samples=len(retain_sample),
                               noise_norm=float(torch.cat(noise).flatten(1).norm(dim=1).mean()))
