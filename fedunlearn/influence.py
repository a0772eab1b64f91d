"""Inverse-Hessian-vector products for influence-style updates (graph influence functions,
second-order feature and label unlearning), without ever forming the Hessian.

`hvp` is Pearlmutter's trick (double backward). `cg_solve` solves (H + damping I) x = b by
conjugate gradients (Hestenes and Stiefel 1952); for a non-convex network H may be indefinite,
so the damping keeps it positive definite near a trained minimum, and a direction of negative
curvature stops the iteration at the last good iterate (reported, never hidden).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out


def grad_of(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    return flat(torch.autograd.grad(loss_fn(), params)).detach()


def hvp_fn(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> H v for the Hessian of loss_fn() at the current params (the first gradient is kept)."""
    grads = flat(torch.autograd.grad(loss_fn(), params, create_graph=True))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return flat(torch.autograd.grad(grads @ v, params, retain_graph=True)).detach()

    return apply


def cg_solve(hvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, damping: float = 0.0,
             iters: int = 50, tol: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """x ~ (H + damping I)^-1 b; stats: iterations, relative residual, whether negative curvature stopped it."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    b_norm = max(rr ** 0.5, 1e-30)
    stats = {"cg_iters": 0, "cg_rel_residual": 1.0, "cg_negative_curvature": False}
    for i in range(iters):
        hp = hvp(p) + damping * p
        curvature = float(p @ hp)
        if curvature <= 0:
            stats["cg_negative_curvature"] = True
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * hp
        new_rr = float(r @ r)
        stats["cg_iters"], stats["cg_rel_residual"] = i + 1, new_rr ** 0.5 / b_norm
        if new_rr ** 0.5 <= tol * b_norm:
            break
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x, stats


@torch.no_grad()
def add_to_params(model: nn.Module, delta: torch.Tensor) -> nn.Module:
    for p, d in zip(params_of(model), unflat(delta, params_of(model))):
        p.add_(d.to(p))
    return model
