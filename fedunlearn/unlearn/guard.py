"""A collapse guard for methods whose steps can wreck a model (SCRUB's max-steps, unrolling SGD's step).

Not part of either paper's update rule. It judges a candidate model by its accuracy on held-out
samples of the classes the retain set still has, and rejects one that falls more than `max_drop`
below the original's there. SCRUB's authors also pick what they return by validation data
(Kurmanji et al. 2023, SCRUB+R rewinds to a checkpoint). Forgetting a whole class lowers accuracy
on that class only, which the held-out samples leave out, so the guard does not fight forgetting.
The held-out samples are task.val (data.val_size: never the test set); without one, a seeded
sample of the retain set.

Measured on the audit.toml task (Fashion-MNIST CNN, class 3, seed 0): SCRUB at lr 2e-3 took
validation accuracy on the kept classes from 0.767 to 0.13 in one max-step pass; unrolling SGD's
step as derived took it to 0.19. Commands in docs/findings.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.training import accuracy
from fedunlearn.unlearn.base import UnlearnTask


@dataclass(frozen=True)
class Guard:
    data: ArrayDataset   # held-out samples of the kept classes
    reference: float     # the original's accuracy on them
    floor: float         # a candidate below this is rejected

    @torch.no_grad()
    def accuracy(self, model: nn.Module, device) -> float:
        was_training = model.training  # judged mid-training (scrub): hand the model back in its mode
        acc = accuracy(model, self.data, device)
        model.train(was_training)
        return acc

    def ok(self, model: nn.Module, device) -> bool:
        return self.accuracy(model, device) >= self.floor


def guard_for(task: UnlearnTask, max_drop: float, samples: int = 512) -> Guard | None:
    """The guard for `task`, or None when it is off (max_drop >= 1) or there is nothing to judge on."""
    if max_drop >= 1:
        return None
    kept = torch.unique(task.retain.y)
    if task.val is not None and len(task.val):
        held = task.val.subset(torch.nonzero(torch.isin(task.val.y, kept)).flatten())
    else:
        gen = torch.Generator().manual_seed(task.seed + 59)
        held = task.retain.subset(torch.randperm(len(task.retain), generator=gen)[:samples])
    if len(held) == 0:
        return None
    probe = Guard(held, 0.0, 0.0)
    reference = probe.accuracy(task.original, task.device)
    return Guard(held, reference, reference - max_drop)
