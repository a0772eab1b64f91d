"""Sekhari, Acharya, Kamath, Suresh (NeurIPS 2021), "Remember What You Want to Forget": Newton step + noise.

At training time the learner stores statistics of the full objective at the trained layer W*:
the summed loss Hessian over all n training samples and a bound R on the feature norms
(`prepare`, cached in task.workdir). A deletion of m samples then needs only those statistics
and the deleted samples, never the retained data:
    H_r = (H_D - sum_forget H_i) / (n - m) + lam I
    W_bar = W* - H_r^-1 grad L_r(W*)            (grad from optimality of W*, see linear.py)
    W~ = W_bar + N(0, sigma^2 I),  sigma = gamma / epsilon * sqrt(2 ln(1.25 / delta)),
    gamma = 2 M L^2 m^2 / (lam^3 n^2),
with L = sqrt(2) R the Lipschitz constant of the cross-entropy and M = 1.5 R^3 that of its
Hessian (linear.GAMMA). With the small weight decays deep nets train with, gamma is large and
the calibrated noise swamps the layer: `sigma` can be set directly instead, and the epsilon
that noise buys is reported either way.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fedunlearn import checkpoint
from fedunlearn.config import check_range
from fedunlearn.unlearn import linear
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    epsilon: float = 1.0
    delta: float = 1e-5
    sigma: float = -1.0   # < 0: calibrated from (epsilon, delta); >= 0: this std, and the epsilon it buys is reported

    def __post_init__(self):
        check_range("epsilon", self.epsilon, 0.0)
        check_range("delta", self.delta, 0.0, 1.0)
        if self.epsilon == 0:
            raise ValueError("'epsilon' must be > 0")


def _stats_path(task: UnlearnTask, w: torch.Tensor) -> Path:
    """Keyed by the trained layer and the training-set size, so statistics of another model are never reused."""
    digest = hashlib.sha256(w.numpy().tobytes() + str(len(task.retain) + len(task.forget)).encode()).hexdigest()
    return Path(task.workdir) / f"sekhari-{digest[:16]}"


def prepare(task: UnlearnTask, cfg: Config = Config()) -> dict:
    """Compute (or find) the training-time statistics; returns numbers worth reporting."""
    stored = _statistics(task)
    return {"feature_radius": stored["radius"], "statistics_s": stored["seconds"]}


def _statistics(task: UnlearnTask) -> dict:
    """Summed loss Hessian over the whole training set and a feature-norm bound, at the trained layer."""
    w = linear.head(task.original)
    linear.check_size(w)
    path = _stats_path(task, w)
    if task.workdir and checkpoint.exists(path):
        return checkpoint.load(path)[0]
    start = time.perf_counter()
    phi = torch.cat([linear.features(task.original, part, task.device) for part in (task.retain, task.forget)])
    stored = {"hessian_sum": linear.hessian_sum(w, phi), "n": len(phi), "radius": float(phi.norm(dim=1).max()),
              "seconds": time.perf_counter() - start}
    if task.workdir:
        checkpoint.save(path, stored)
    return stored


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    stored = _statistics(task)  # a load when `prepare` already ran at training time
    w = linear.head(task.original)
    lam = task.train_cfg.weight_decay
    n, m = stored["n"], len(task.forget)
    phi_f = linear.features(task.original, task.forget, task.device)
    h_r = (stored["hessian_sum"] - linear.hessian_sum(w, phi_f)) / (n - m)
    h_r += lam * torch.eye(w.numel(), dtype=torch.float64)
    w_bar = w - linear.solve(h_r, linear.retain_grad_from_optimum(w, phi_f, task.forget.y, n, lam))

    radius = stored["radius"]
    gamma = 2 * (linear.GAMMA * radius ** 3) * (2 * radius ** 2) * m ** 2 / (lam ** 3 * n ** 2)
    scale = math.sqrt(2 * math.log(1.25 / cfg.delta))
    sigma = gamma / cfg.epsilon * scale if cfg.sigma < 0 else cfg.sigma
    gen = torch.Generator().manual_seed(task.seed + 13)
    new_w = w_bar + sigma * torch.randn(w.shape, generator=gen, dtype=torch.float64)
    stats = Stats(sigma=sigma, gamma=gamma, epsilon=(gamma * scale / sigma) if sigma > 0 else float("inf"),
                  delta=cfg.delta, newton_step_norm=float((w_bar - w).norm()), head_params=w.numel(),
                  used_retain_data=False)
    return linear.with_head(task.original, new_w).eval(), stats
