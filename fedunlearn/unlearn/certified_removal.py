"""Certified removal (Guo, Goldstein, Hannun, van der Maaten, ICML 2020): one Newton step on the last layer.

The last linear layer on frozen features is an L2-regularised logistic regression (see linear.py).
Removing the forget set is one Newton step on the retain objective,
    W- = W* - H_r^-1 grad L_r(W*),
which equals Guo et al.'s W* + H^-1 Delta when W* is the exact optimum and stays right when SGD
stopped a little short of it. Loss perturbation: the retain objective carries the random
linear term b.W / n_r with b ~ N(0, sigma^2); Guo et al. show the released layer is then
(epsilon, delta)-indistinguishable from a retrained one while the gradient residual
||grad L_r(W-)|| (in their sum-of-losses units) stays below sigma * epsilon / c, with
c = sqrt(2 ln(1.5 / delta)). The measured residual, its data-dependent bound and that budget
are reported; `certified` is false when the bound exceeds the budget (then: retrain).
For a deep model only the last layer moves; the feature extractor keeps what it learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedunlearn.config import check_range
from fedunlearn.unlearn import linear
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    sigma: float = 0.0         # std of the loss perturbation b; 0 = plain Newton removal, no certificate
    epsilon: float = 1.0
    delta: float = 1e-4
    newton_steps: int = 1      # Guo et al. take one; each further step shrinks the residual quadratically

    def __post_init__(self):
        check_range("sigma", self.sigma, 0.0)
        check_range("epsilon", self.epsilon, 0.0)
        check_range("delta", self.delta, 0.0, 1.0)
        check_range("newton_steps", self.newton_steps, 1)


def newton_removal(w: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, lam: float, steps: int = 1,
                   b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton steps on 1/n sum CE + lam/2 ||W||^2 (+ b.W / n) over (phi, y); returns (W-, last step)."""
    n = len(y)
    eye = torch.eye(w.numel(), dtype=torch.float64)
    step = torch.zeros_like(w)
    for _ in range(steps):
        grad = linear.grad_sum(w, phi, y) / n + lam * w + (b / n if b is not None else 0.0)
        step = -linear.solve(linear.hessian_sum(w, phi) / n + lam * eye, grad)
        w = w + step
    return w, step


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    w = linear.head(task.original)
    linear.check_size(w)
    lam = task.train_cfg.weight_decay
    phi = linear.features(task.original, task.retain, task.device)
    y = task.retain.y
    gen = torch.Generator().manual_seed(task.seed + 7)
    b = cfg.sigma * torch.randn(w.shape, generator=gen, dtype=torch.float64) if cfg.sigma > 0 else None
    new_w, last_step = newton_removal(w, phi, y, lam, cfg.newton_steps, b)

    n = len(y)
    full_grad = linear.grad_sum(new_w, phi, y) + n * lam * new_w + (b if b is not None else 0.0)
    residual = float(full_grad.norm())                     # Guo et al.'s units: sum of losses
    bound = linear.residual_bound(phi, last_step)
    budget = cfg.sigma * cfg.epsilon / math.sqrt(2 * math.log(1.5 / cfg.delta)) if cfg.sigma > 0 else 0.0
    stats = Stats(gradient_residual=residual, residual_bound=bound, residual_budget=budget,
                  certified=bool(cfg.sigma > 0 and bound <= budget),
                  step_norm=float((new_w - w).norm()), head_params=w.numel())
    return linear.with_head(task.original, new_w).eval(), stats


def diagnose(task: UnlearnTask, cfg: Config, model) -> dict:
    """Distance from the result to the exact minimiser of the (perturbed) retain objective, by Newton to convergence."""
    phi = linear.features(task.original, task.retain, task.device)
    gen = torch.Generator().manual_seed(task.seed + 7)
    b = cfg.sigma * torch.randn(linear.head(model).shape, generator=gen, dtype=torch.float64) if cfg.sigma > 0 else None
    w = linear.head(model)
    optimum, _ = newton_removal(w, phi, task.retain.y, task.train_cfg.weight_decay, steps=10, b=b)
    return {"dist_to_optimum": float((w - optimum).norm())}
