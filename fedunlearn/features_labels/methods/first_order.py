"""First-order feature/label unlearning (Warnecke et al., NDSS 2023, Sec. 4.1).

The affected samples Z are replaced by their corrected versions Z~; the update moves the
parameters against the change of their loss gradient,
    theta' = theta* - tau * (grad L(Z~; theta*) - grad L(Z; theta*)) / n,
a gradient step that needs neither the rest of the data nor a Hessian. Warnecke et al. leave
the unlearning rate tau to the user; with tau = 0 (the default) it is chosen by a line search
over powers of ten on the corrected training objective (data the method holds; never the
test set and never the retrained model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedunlearn.config import check_range
from fedunlearn.contract import MethodResult
from fedunlearn.features_labels.task import FLTask, affected_loss_change, objective
from fedunlearn.influence import add_to_params, grad_of, params_of
from fedunlearn.training import clone

TAU_GRID = tuple(10.0 ** k for k in range(-2, 6))


@dataclass(frozen=True)
class Config:
    tau: float = 0.0    # unlearning rate; 0 = line search over TAU_GRID

    def __post_init__(self):
        check_range("tau", self.tau, 0.0)


def unlearn(task: FLTask, cfg: Config = Config()):
    model = clone(task.original).cpu().eval()  # closed-form updates on the CPU, where the data is
    g = grad_of(lambda: affected_loss_change(model, task), params_of(model))
    wd = task.train_cfg.weight_decay
    if cfg.tau > 0:
        tau, losses = cfg.tau, {}
    else:
        losses = {}
        for t in TAU_GRID:
            trial = add_to_params(clone(model), -t * g)
            with torch.no_grad():
                losses[t] = float(objective(trial, task.data.after, wd))
        tau = min(losses, key=losses.get)
    add_to_params(model, -tau * g)
    return MethodResult(model, {"tau": tau, "grad_change_norm": float(g.norm())})
