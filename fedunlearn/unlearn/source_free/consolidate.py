"""Phase 2 of source-free unlearning (Ahmed et al., "Towards Source-Free Machine Unlearning", CVPR 2025):
consolidation. A student, initialised from a start model, is distilled from a teacher on
synthetic samples of the retained classes, minimising KL(p_teacher || p_student), plus an
optional lambda * forget term supplied by the caller. Optionally both see the batch shifted
(`shift`) and mixed (`mix`), as distillation on real data does with augmentations.

The teacher is any function from inputs to probabilities (`model_teacher` wraps a frozen
model). The forget term is any function of the student returning a scalar; it is where
knowledge that must go is named (a quadratic penalty from a departing client's statistics,
for instance).

BatchNorm layers stay in eval mode throughout: synthetic batches have other statistics than
real data, and updating the running statistics on them would drift the model (measured).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.config import check_range
from fedunlearn.training import clone, seed_everything
from fedunlearn.unlearn.source_free.generator import Generator, draw_labelled, random_view

Teacher = Callable[[torch.Tensor], torch.Tensor]   # inputs -> probabilities
ForgetTerm = Callable[[nn.Module], torch.Tensor]   # student -> scalar loss
SampleFilter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (labels, teacher probs) -> bool mask


@dataclass(frozen=True)
class ConsolidateConfig:
    steps: int = 100             # few: the student starts near its goal, and long distillation from a
                                 # teacher that still holds a backdoor slowly re-teaches it (measured)
    batch_size: int = 32
    lr: float = 1e-3             # Adam
    temperature: float = 1.0     # higher passes more of the teacher's small probabilities, backdoor included
    forget_weight: float = 1.0   # lambda in KL + lambda * forget term
    last_layers: int = 0         # train only the last this many layers with weights (0 = all of them)
    shift: float = 0.0           # teacher and student see each batch translated by a random offset of up to
                                 # this fraction of the side (generator.random_view): the synthetic samples of a
                                 # class are a narrow mode, and shifted copies cover more of its real images
    mix: float = 0.0             # mixup alpha (0: off): teacher and student see the same convex mix of two
                                 # synthetic samples, weight ~ Beta(mix, mix) per sample (function matching,
                                 # Beyer et al., CVPR 2022); a mix is labelled by its larger part

    def __post_init__(self):
        check_range("consolidate.steps", self.steps, 0)
        check_range("consolidate.batch_size", self.batch_size, 1)
        check_range("consolidate.lr", self.lr, 0.0)
        check_range("consolidate.temperature", self.temperature, 1e-3)
        check_range("consolidate.forget_weight", self.forget_weight, 0.0)
        check_range("consolidate.last_layers", self.last_layers, 0)
        check_range("consolidate.shift", self.shift, 0.0, 0.5)
        check_range("consolidate.mix", self.mix, 0.0)


def model_teacher(model: nn.Module, temperature: float = 1.0) -> Teacher:
    """A frozen model as a teacher: softmax(logits / temperature), no gradients."""
    model.eval()

    @torch.no_grad()
    def probs(x: torch.Tensor) -> torch.Tensor:
        return F.softmax(model(x) / temperature, dim=1)

    return probs


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Train mode for the model, eval mode for its BatchNorm layers (running statistics fixed)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def consolidate(start: nn.Module, teacher: Teacher, generator: Generator, classes, cfg: ConsolidateConfig,
                device, forget_term: ForgetTerm | None = None, seed: int = 0,
                keep: SampleFilter | None = None) -> tuple[nn.Module, dict]:
    """Distil `teacher` into a copy of `start` on generator samples of `classes`.

    `keep(labels, teacher_probs) -> bool mask` leaves the other samples of each batch out of the KL
    (the batch's mean is still over all of them, so a step's scale does not depend on how many).

    The teacher must already include cfg.temperature (see `model_teacher`); the student's
    logits are divided by the same temperature and the KL is scaled by T^2 as usual.
    `start` is not modified. Returns the student (eval mode) and stats.
    """
    started = time.perf_counter()
    seed_everything(seed)
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    if len(classes) == 0:
        raise ValueError("consolidation needs at least one retained class")
    student = freeze_batchnorm(clone(start).to(device))
    generator = generator.to(device).eval()
    opt = torch.optim.Adam(trainable(student, cfg.last_layers), lr=cfg.lr)
    temp = cfg.temperature
    stats = {"consolidate_steps": cfg.steps}
    kl = forget = torch.zeros(())
    dropped = torch.zeros(())
    for _ in range(cfg.steps):
        with torch.no_grad():
            x, y = draw_labelled(generator, classes, cfg.batch_size, device)
            if cfg.shift > 0:
                x = random_view(x, cfg.shift, flip=False)
            if cfg.mix > 0:
                x, y = mixed(x, y, cfg.mix)
            target = teacher(x)
        log_student = F.log_softmax(student(x) / temp, dim=1)
        if keep is None:
            kl = F.kl_div(log_student, target, reduction="batchmean") * temp * temp
        else:
            kept = keep(y, target)
            dropped = dropped + (~kept).sum()
            kl = F.kl_div(log_student[kept], target[kept], reduction="sum") / len(x) * temp * temp
        loss = kl
        if forget_term is not None and cfg.forget_weight > 0:
            forget = forget_term(student)
            loss = loss + cfg.forget_weight * forget
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    stats.update(consolidate_kl=float(kl.detach()), consolidate_forget=float(forget.detach()),
                 consolidate_s=time.perf_counter() - started)
    if keep is not None:
        stats["consolidate_dropped"] = float(dropped) / max(1, cfg.steps * cfg.batch_size)
    return student.eval(), stats


def mixed(x: torch.Tensor, labels: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample mixed with another of the batch (a random pairing), lam * x_i + (1 - lam) * x_j with
    lam ~ Beta(alpha, alpha) per sample, and labelled as x_i where lam >= 0.5, else as x_j (global RNG)."""
    lam = torch.distributions.Beta(alpha, alpha).sample((len(x),)).to(x.device)
    partner = torch.randperm(len(x), device=x.device)
    weight = lam.view(-1, *[1] * (x.dim() - 1))
    return weight * x + (1 - weight) * x[partner], torch.where(lam >= 0.5, labels, labels[partner])


@torch.no_grad()
def agreement(model: nn.Module, teacher: Teacher, x: torch.Tensor, device, batch_size: int = 512) -> float:
    """Share of inputs on which `model` and `teacher` predict the same class."""
    model.to(device).eval()
    same = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        same += int((model(xb).argmax(1) == teacher(xb).argmax(1)).sum())
    return same / max(1, len(x))


@torch.no_grad()
def predicted(model: nn.Module, x: torch.Tensor, device, batch_size: int = 512) -> torch.Tensor:
    """The model's class for each input, on the CPU."""
    model.to(device).eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def worst_class_agreement(ours: torch.Tensor, theirs: torch.Tensor, num_classes: int) -> float:
    """min over classes c of: the share of inputs `theirs` puts in c that `ours` puts in c too
    (classes `theirs` never predicts are left out)."""
    shares = [float((ours[theirs == c] == c).float().mean()) for c in range(num_classes) if (theirs == c).any()]
    return min(shares, default=1.0)


def trainable(model: nn.Module, last_layers: int = 0) -> list[nn.Parameter]:
    """The parameters of the last `last_layers` modules that hold weights (0: every parameter)."""
    if not last_layers:
        return list(model.parameters())
    layers = [m for m in model.modules() if list(m.parameters(recurse=False))]
    return [p for m in layers[-last_layers:] for p in m.parameters(recurse=False)]
