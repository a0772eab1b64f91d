"""Source-free Newton removal (Ahmed et al., CVPR 2025, "Towards Source-Free Machine Unlearning").

Newton removal without the retained data: only the trained model and the forget set are used.
On the last linear layer (see linear.py):
- the retain gradient follows from the trained layer being the optimum of the full objective
  (grad L_r(W*) = -(n_f lam W* + sum_forget grad CE) / n_r; needs the training-set size n only);
- the retain Hessian is estimated without retain data, in one of two ways (`hessian`):
  - "forget": Ahmed et al. assume that retain and forget samples change their loss alike under
    small parameter perturbations, and fit the Hessian to the forget loss's developments by a
    semidefinite program. Under that assumption the fit's target is the forget set's mean
    Hessian, which for a softmax layer has a closed form (positive semidefinite by
    construction); we compute it directly instead of solving the SDP over sampled perturbations.
    The assumption fails for class removal: the forget set then excites only its own class's
    directions (docs/findings.md).
  - "classwise" (default): the retain Hessian as a sum over classes, each class weighted by
    its estimated retained count (n / K minus its forget samples: a balanced training set is
    assumed) and estimated from the forget set's samples of that class where there are at
    least `min_class_samples`, else from stand-in samples of that class that a label-
    conditioned generator synthesizes from the model alone (the paper's knowledge
    reconstruction, fedunlearn.unlearn.source_free.generator). Random forgetting thus keeps the
    paper's estimate, and a removed class's retained classes get a Hessian of their own.
    Known limit: the generator's stand-ins are more confident than real samples, so their
    softmax curvature is too small and the step overshoots (measurements in docs/findings.md).
Optional Gaussian noise on the result, as in the paper. `diagnose` (run by the experiment
runner, outside the timing, because it needs the retain set) reports the distance to the exact
Newton update and the relative error of the estimated Hessian.
Paper: Ahmed et al., Towards Source-Free Machine Unlearning, CVPR 2025.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fedunlearn.config import check_range
from fedunlearn.unlearn import linear
from fedunlearn.unlearn.base import Stats, UnlearnTask
from fedunlearn.unlearn.source_free.generator import GeneratorConfig, sample, train_generator


@dataclass(frozen=True)
class Config:
    sigma: float = 0.0            # std of Gaussian noise added to the updated layer; 0 = none
    hessian: Literal["classwise", "forget"] = "classwise"  # how the retain Hessian is estimated (see above)
    min_class_samples: int = 5    # classwise: fewer forget samples of a class than this -> synthetic ones
    synthetic_per_class: int = 200
    generator: GeneratorConfig = GeneratorConfig(steps=100)

    def __post_init__(self):
        check_range("sigma", self.sigma, 0.0)
        check_range("min_class_samples", self.min_class_samples, 1)
        check_range("synthetic_per_class", self.synthetic_per_class, 1)


def forget_hessian(w: torch.Tensor, phi_f: torch.Tensor, lam: float) -> torch.Tensor:
    """Retain-objective Hessian estimated from the forget samples: their mean loss Hessian plus the L2 term."""
    return linear.hessian_sum(w, phi_f) / len(phi_f) + lam * torch.eye(w.numel(), dtype=torch.float64)


def classwise_hessian(task: UnlearnTask, cfg: Config, w: torch.Tensor, phi_f: torch.Tensor, n: int) -> tuple:
    """sum_c n_r,c * H_c / n_r + lam I, H_c from the forget samples of class c or synthetic ones."""
    classes, y_f = task.num_classes, task.forget.y
    retained = (n / classes - torch.bincount(y_f, minlength=classes).double()).clamp(min=0)
    synthetic = [c for c in range(classes) if (y_f == c).sum() < cfg.min_class_samples and retained[c] > 0]
    phi_s = y_s = None
    if synthetic:
        generator, _ = train_generator(task.original, tuple(task.forget.x.shape[1:]), classes, cfg.generator,
                                       task.device, classes=synthetic, seed=task.seed)
        x_s, y_s = sample(generator, synthetic, cfg.synthetic_per_class * len(synthetic), task.device, seed=task.seed + 1)
        phi_s = linear.features(task.original, x_s, task.device)
    h = torch.zeros(w.numel(), w.numel(), dtype=torch.float64)
    for c in range(classes):
        if retained[c] > 0:
            phi_c = phi_s[y_s == c] if c in synthetic else phi_f[y_f == c]
            h += retained[c] * linear.hessian_sum(w, phi_c) / len(phi_c)
    eye = torch.eye(w.numel(), dtype=torch.float64)
    return h / retained.sum() + task.train_cfg.weight_decay * eye, synthetic


def estimated_hessian(task: UnlearnTask, cfg: Config, w: torch.Tensor, phi_f: torch.Tensor, n: int) -> tuple:
    """(estimated retain Hessian, the classes estimated from synthetic samples)."""
    if cfg.hessian == "forget":
        return forget_hessian(w, phi_f, task.train_cfg.weight_decay), []
    return classwise_hessian(task, cfg, w, phi_f, n)


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    w = linear.head(task.original)
    linear.check_size(w)
    lam = task.train_cfg.weight_decay
    n = len(task.retain) + len(task.forget)  # the training-set size: a count, not data
    phi_f = linear.features(task.original, task.forget, task.device)
    grad = linear.retain_grad_from_optimum(w, phi_f, task.forget.y, n, lam)
    hessian, synthetic = estimated_hessian(task, cfg, w, phi_f, n)
    new_w = w - linear.solve(hessian, grad)
    if cfg.sigma > 0:
        gen = torch.Generator().manual_seed(task.seed + 11)
        new_w = new_w + cfg.sigma * torch.randn(w.shape, generator=gen, dtype=torch.float64)
    stats = Stats(step_norm=float((new_w - w).norm()), head_params=w.numel(), used_retain_data=False,
                  synthetic_classes=len(synthetic))
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
    est_h, _ = estimated_hessian(task, cfg, w, phi_f, len(task.retain) + len(task.forget))
    return {"dist_to_exact_newton": float((step - exact_step).norm()),
            "exact_newton_step_norm": float(exact_step.norm()),
            "hessian_rel_error": float((est_h - exact_h).norm() / exact_h.norm())}
