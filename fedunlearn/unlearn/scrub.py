"""SCRUB (Kurmanji et al., "Towards unbounded machine unlearning", NeurIPS 2023): a student moves away from its teacher.

The teacher is the original; the student starts as a copy. Each epoch first (for the first
`max_epochs` epochs) takes max-steps on the forget set, ascending the KL divergence between
teacher and student outputs, then min-steps on the retain set, descending
alpha * KL(teacher || student) + gamma * CE. Alternating keeps the retain set's knowledge
while the student's outputs on the forget set leave the teacher's.
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
    epochs: int = 3         # min-step epochs on retain (the paper's sgda_epochs)
    max_epochs: int = 2     # of those, how many begin with a max-step pass over forget (msteps)
    lr: float = 2e-3
    batch_size: int = 128
    forget_batch_size: int = 16  # small forget batches: several max-steps per pass
    temperature: float = 4.0
    alpha: float = 0.5      # KL weight on retain
    gamma: float = 1.0      # CE weight on retain

    def __post_init__(self):
        check_range("epochs", self.epochs, 1)
        check_range("max_epochs", self.max_epochs, 0)
        check_range("lr", self.lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("forget_batch_size", self.forget_batch_size, 1)
        if self.temperature <= 0:
            raise ValueError(f"'temperature' must be > 0, got {self.temperature}")


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened outputs, scaled by temp^2 as in Hinton et al."""
    return F.kl_div(F.log_softmax(student_logits / temp, 1), F.softmax(teacher_logits / temp, 1),
                    reduction="batchmean") * temp ** 2


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    device = task.device
    teacher = task.original.to(device).eval()
    student = clone(task.original).to(device).train()
    seed_everything(task.seed + 43)
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=task.train_cfg.momentum,
                          weight_decay=task.train_cfg.weight_decay)

    def step(x, y, forget: bool):
        x = x.to(device)
        out = student(x)
        with torch.no_grad():
            target = teacher(x)
        kl = distill_kl(out, target, cfg.temperature)
        loss = -kl if forget else cfg.alpha * kl + cfg.gamma * F.cross_entropy(out, y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    max_steps = min_steps = 0
    for epoch in range(cfg.epochs):
        if epoch < cfg.max_epochs:
            for x, y in loader(task.forget, cfg.forget_batch_size, shuffle=True, seed=task.seed + epoch):
                step(x, y, forget=True)
                max_steps += 1
        for x, y in loader(task.retain, cfg.batch_size, shuffle=True, seed=task.seed + epoch):
            step(x, y, forget=False)
            min_steps += 1
    return student.eval(), Stats(epochs=cfg.epochs, max_steps=max_steps, min_steps=min_steps)
