"""Certified graph unlearning (Chien, Pan, Milenkovic, 2022; AISTATS 2023): SGC, one Newton step, objective noise.

SGC is a logistic regression on the propagated features Phi = A^K X, so removing nodes, edges
or features is a change of the strongly convex objective
    L(W) = sum_i CE(W phi_i, y_i) + n lam/2 ||W||^2 + b.W,   b ~ N(0, sigma^2 I),
through every feature row the propagation touches (the neighbours' rows change too: the
difference from certified removal on i.i.d. data). The update is one Newton step on the new
objective from the trained weights, on the features of the graph after the request. The
objective perturbation b makes the result (epsilon, delta)-indistinguishable from retraining
on the perturbed objective as long as the gradient residual after the step is at most
sigma epsilon / c, c = sqrt(2 ln(1.5/delta)) (Guo et al. 2020, Thm. 3; Chien et al. Thm. 4.1).
We bound the residual from the data (the Taylor remainder of the Newton step, Guo et al.
Cor. 1) and report the epsilon that sigma buys: epsilon = bound * c / sigma. Both the
original and the certified model are meant to optimise the perturbed objective; the shared
training loop trains the original without b, so the certificate covers the unlearning step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedunlearn.config import check_range
from fedunlearn.contract import MethodResult
from fedunlearn.graph.models import adjacency
from fedunlearn.graph.task import GraphTask
from fedunlearn.unlearn import linear
from fedunlearn.unlearn.certified_removal import newton_removal

MODELS = ("sgc",)


@dataclass(frozen=True)
class Config:
    sigma: float = 0.01      # std of the objective perturbation b (sum-of-losses units)
    delta: float = 1e-4
    newton_steps: int = 2    # the bound is on the last step, which a second step makes tiny

    def __post_init__(self):
        check_range("sigma", self.sigma, 0.0)
        check_range("delta", self.delta, 0.0, 1.0)
        check_range("newton_steps", self.newton_steps, 1)


@torch.no_grad()
def sgc_features(model, graph) -> torch.Tensor:
    """Propagated features of the training nodes, float64, with the bias column."""
    phi = model.embed(graph.x, adjacency(graph, model.adj_kind))[graph.train].double()
    return torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64)], dim=1)


def unlearn(task: GraphTask, cfg: Config = Config()):
    model = task.original
    w = linear.head(model)
    phi, y = sgc_features(model, task.after), task.after.y[task.after.train]
    gen = torch.Generator().manual_seed(task.seed + 7)
    b = cfg.sigma * torch.randn(w.shape, generator=gen, dtype=torch.float64) if cfg.sigma > 0 else None
    new_w, last_step = newton_removal(w, phi, y, task.train_cfg.weight_decay, cfg.newton_steps, b)
    n = len(y)
    residual = float((linear.grad_sum(new_w, phi, y) + n * task.train_cfg.weight_decay * new_w
                      + (b if b is not None else 0.0)).norm())
    bound = linear.residual_bound(phi, last_step)
    c = math.sqrt(2 * math.log(1.5 / cfg.delta))
    epsilon = bound * c / cfg.sigma if cfg.sigma > 0 else float("inf")
    stats = {"epsilon": epsilon, "delta": cfg.delta, "sigma": cfg.sigma, "residual_bound": bound,
             "gradient_residual": residual, "step_norm": float((new_w - w).norm())}
    return MethodResult(linear.with_head(model, new_w).eval(), stats)
