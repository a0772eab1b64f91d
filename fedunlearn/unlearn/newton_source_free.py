"""Source-free Newton removal (Ahmed et al., CVPR 2025, "Towards Source-Free Machine Unlearning").

Newton removal without the retained data: only the trained model and the forget set are used.
On the last linear layer (see linear.py):
- the retain gradient follows from the trained layer being the optimum of the full objective
  (grad L_r(W*) = -(n_f lam W* + sum_forget grad CE) / n_r; needs the training-set size n only);
- the retain Hessian is estimated from the forget set at W*. Ahmed et al. assume that retain and
  forget samples change their loss alike under small parameter perturbations, and fit the
  Hessian to the forget loss's developments by a semidefinite program. Under that assumption
  the fit's target is the forget set's mean Hessian, which for a softmax layer has a closed
  form (positive semidefinite by construction); we compute it directly instead of solving the
  SDP over sampled perturbations.
Optional Gaussian noise on the result, as in the paper. `diagnose` (run by the experiment
runner, outside the timing, because it needs the retain set) reports the distance to the exact
Newton update and the relative error of the estimated Hessian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedunlearn.config import check_range
from fedunlearn.unlearn import linear
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    sigma: float = 0.0   # std of Gaussian noise added to the updated layer; 0 = none

    def __post_init__(self):
        check_range("sigma", self.sigma, 0.0)


def estimated_hessian(w: torch.Tensor, phi_f: torch.Tensor, lam: float) -> torch.Tensor:
    """Retain-objective Hessian estimated from the forget samples: their mean loss Hessian plus the L2 term."""
    return linear.hessian_sum(w, phi_f) / len(phi_f) + lam * torch.eye(w.numel(), dtype=torch.float64)


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    w = linear.head(task.original)
    linear.check_size(w)
    lam = task.train_cfg.weight_decay
    n = len(task.retain) + len(task.forget)  # the training-set size: a count, not data
    phi_f = linear.features(task.original, task.forget, task.device)
    grad = linear.retain_grad_from_optimum(w, phi_f, task.forget.y, n, lam)
    new_w = w - linear.solve(estimated_hessian(w, phi_f, lam), grad)
    if cfg.sigma > 0:
        gen = torch.Generator().manual_seed(task.seed + 11)
        new_w = new_w + cfg.sigma * torch.randn(w.shape, generator=gen, dtype=torch.float64)
    stats = Stats(step_norm=float((new_w - w).norm()), head_params=w.numel(), used_retain_data=False)
    return linear.with_head(task.original, new_w).eval(), stats


def diagnose(task: UnlearnTask, cfg: Config, model) -> dict:
    """Compare with the exact Newton update, which needs the retain set (so it is not part of the method)."""
    w = linear.head(task.original)
    lam = task.train_cfg.weight_decay
    phi_r = linear.features(task.original, task.retain, task.device)
    phi_f = linear.features(task.original, task.forget, task.device)
    eye = torch.eye(w.numel(), dtype=torch.float64)
    exact_h = linear.hessian_sum(w, phi_r) / len(phi_r) + lam * eye
    exact_grad = linear.grad_sum(w, phi_r, task.retain.y) / len(phi_r) + lam * w
    exact_step = -linear.solve(exact_h, exact_grad)
    step = linear.head(model) - w
    est_h = estimated_hessian(w, phi_f, lam)
    return {"dist_to_exact_newton": float((step - exact_step).norm()),
            "exact_newton_step_norm": float(exact_step.norm()),
            "hessian_rel_error": float((est_h - exact_h).norm() / exact_h.norm())}
