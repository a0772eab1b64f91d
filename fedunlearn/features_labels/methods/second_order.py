"""Second-order feature/label unlearning (Warnecke et al., NDSS 2023, Sec. 4.2).

The influence-function update for replacing the affected samples Z by Z~,
    theta' = theta* - H^-1 (grad L(Z~; theta*) - grad L(Z; theta*)) / n,
with H the Hessian of the corrected training objective (mean loss plus the weight-decay L2
term) at theta*. H is never formed: conjugate gradients on Hessian-vector products
(fedunlearn.influence). For a convex model this is the Newton step Warnecke et al. analyse;
for a neural network H can be indefinite, so the damping starts tiny and grows tenfold while
CG meets negative curvature.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.config import check_range
from fedunlearn.contract import MethodResult
from fedunlearn.features_labels.task import FLTask, affected_loss_change, objective
from fedunlearn.influence import add_to_params, cg_solve, grad_of, hvp_fn, params_of
from fedunlearn.training import clone


@dataclass(frozen=True)
class Config:
    cg_iters: int = 100
    damping: float = 1e-5
    max_damping: float = 1.0

    def __post_init__(self):
        check_range("cg_iters", self.cg_iters, 1)
        check_range("damping", self.damping, 0.0)
        check_range("max_damping", self.max_damping, self.damping)


def unlearn(task: FLTask, cfg: Config = Config()):
    model = clone(task.original).cpu().eval()  # closed-form updates on the CPU, where the data is
    params = params_of(model)
    g = grad_of(lambda: affected_loss_change(model, task), params)
    hvp = hvp_fn(lambda: objective(model, task.data.after, task.train_cfg.weight_decay), params)
    damping, tries = cfg.damping, 0
    while True:
        step, stats = cg_solve(hvp, g, damping, cfg.cg_iters)
        tries += 1
        if not stats["cg_negative_curvature"] or damping * 10 > cfg.max_damping:
            break
        damping = max(damping * 10, 1e-8)
    add_to_params(model, -step)
    stats.update(damping=damping, cg_tries=tries, update_norm=float(step.norm()), grad_change_norm=float(g.norm()))
    return MethodResult(model, stats)
