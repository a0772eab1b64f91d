"""Bad teaching (Chundawat, Tarun, Mandal, Kankanhalli, AAAI 2023): a competent and an incompetent teacher.

The student starts as a copy of the original and is distilled, with KL divergence on
temperature-softened outputs, towards two teachers at once: on retain samples the competent
teacher (the original model), on forget samples an incompetent teacher (a randomly initialised
model of the same architecture). The paper uses a fraction of the retain set (30%), one epoch
and Adam at a small learning rate; so do the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedunlearn.config import check_range
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.training import clone, loader
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 256
    temperature: float = 1.0
    retain_fraction: float = 0.3  # share of the retain set the student sees

    def __post_init__(self):
        check_range("epochs", self.epochs, 1)
        check_range("lr", self.lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("temperature", self.temperature, 0.0)
        check_range("retain_fraction", self.retain_fraction, 0.0, 1.0)
        if self.temperature == 0:
            raise ValueError("'temperature' must be > 0")


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    device, temp = task.device, cfg.temperature
    gen = torch.Generator().manual_seed(task.seed + 23)
    count = int(round(cfg.retain_fraction * len(task.retain)))
    retain = task.retain.subset(torch.randperm(len(task.retain), generator=gen)[:count])
    # The label is replaced by a flag: 1 = forget sample, whose target comes from the incompetent teacher.
    flags = torch.cat([torch.zeros(len(retain)), torch.ones(len(task.forget))]).long()
    data = ArrayDataset(torch.cat([retain.x, task.forget.x]), flags)

    good = task.original.to(device).eval()
    bad = task.make_model().to(device).eval()
    student = clone(task.original).to(device).train()
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    batches = loader(data, cfg.batch_size, shuffle=True, seed=task.seed + 23)
    for _ in range(cfg.epochs):
        for x, flag in batches:
            x, flag = x.to(device), flag.to(device).float().view(-1, 1)
            with torch.no_grad():
                target = flag * F.softmax(bad(x) / temp, 1) + (1 - flag) * F.softmax(good(x) / temp, 1)
            loss = F.kl_div(F.log_softmax(student(x) / temp, 1), target, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return student.eval(), Stats(epochs=cfg.epochs, retain_samples=count)
