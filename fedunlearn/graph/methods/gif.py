"""GIF, the graph influence function (Wu, Yang, Qian, Liu, Wang, He, Chen; WWW 2023).

An influence function estimates how the trained parameters move when training data changes;
on a graph, deleting a node or an edge also changes the predictions (and so the losses) of its
neighbours, which the classical influence function misses. GIF takes the gradient difference
of the whole training objective between the graph before and after the request, so the
deleted nodes' own losses and the changed losses of every node in their receptive field enter:

    g = grad S(theta*; G', V') - grad S(theta*; G, V),   S = sum of training losses + |V| wd/2 ||theta||^2
    theta' = theta* - (H'/|V'| + damping I)^-1 g / |V'|

with H' the Hessian of S(.; G', V') at theta*. The inverse-Hessian-vector product is solved
by conjugate gradients on Hessian-vector products (fedunlearn.influence). A non-convex GNN's
Hessian can be indefinite: the damping starts tiny (exact for a convex model such as SGC) and
grows tenfold while CG meets negative curvature (Levenberg-Marquardt style), playing the part
of GIF's own damping term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedunlearn.config import check_range
from fedunlearn.contract import MethodResult
from fedunlearn.graph.data import Graph
from fedunlearn.graph.models import adjacency, train_loss
from fedunlearn.graph.task import GraphTask
from fedunlearn.influence import add_to_params, cg_solve, grad_of, hvp_fn, params_of
from fedunlearn.training import clone

MODELS = None


@dataclass(frozen=True)
class Config:
    cg_iters: int = 100
    damping: float = 1e-5      # first try; raised x10 while CG meets negative curvature
    max_damping: float = 1.0
    scale: float = 1.0         # multiplies the update (GIF's own scaling knob; 1 = the Newton step)

    def __post_init__(self):
        check_range("cg_iters", self.cg_iters, 1)
        check_range("damping", self.damping, 0.0)
        check_range("max_damping", self.max_damping, self.damping)
        check_range("scale", self.scale, 0.0)


def summed_objective(model, graph: Graph, adj, wd: float) -> torch.Tensor:
    n = int(graph.train.sum())
    l2 = sum((p ** 2).sum() for p in params_of(model))
    return n * train_loss(model, graph, adj) + n * wd / 2 * l2 if n else wd / 2 * 0 * l2


def unlearn(task: GraphTask, cfg: Config = Config()):
    model = clone(task.original).train()
    params = params_of(model)
    wd = task.train_cfg.weight_decay
    adj_before, adj_after = adjacency(task.before, model.adj_kind), adjacency(task.after, model.adj_kind)
    n_after = max(1, int(task.after.train.sum()))
    after_fn = lambda: summed_objective(model, task.after, adj_after, wd)  # noqa: E731
    g = grad_of(after_fn, params) - grad_of(lambda: summed_objective(model, task.before, adj_before, wd), params)
    hvp = hvp_fn(lambda: after_fn() / n_after, params)
    damping, tries = cfg.damping, 0
    while True:
        step, stats = cg_solve(hvp, g / n_after, damping, cfg.cg_iters)
        tries += 1
        if not stats["cg_negative_curvature"] or damping * 10 > cfg.max_damping:
            break
        damping = max(damping * 10, 1e-8)
    stats.update(damping=damping, cg_tries=tries)
    add_to_params(model, -cfg.scale * step)
    stats.update(update_norm=float(step.norm()) * cfg.scale, grad_diff_norm=float(g.norm()))
    return MethodResult(model.eval(), stats)
