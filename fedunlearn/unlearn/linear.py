"""Logistic-regression math shared by the Newton-type methods (certified_removal, newton_source_free, sekhari).

A model is read as fixed features plus its last `nn.Linear` layer, as Guo et al. (ICML 2020,
Sec. 4) do for deep models: the layer is a multinomial logistic regression on the frozen
features phi, with the bias as one more column, W = [weight | bias] of shape (K, d + 1).
Its objective on n samples is the mean cross-entropy plus the L2 penalty that SGD's weight
decay applies during training (bias included):

    L(W) = 1/n * sum_i CE(W phi_i, y_i) + lam/2 * ||W||^2

which is strongly convex, so one Newton step from a near-optimum lands near the optimum.
Parameters are flattened row by row: index k * (d + 1) + j.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.errors import ConfigError
from fedunlearn.training import clone

# An exact Hessian of D parameters costs D^2 doubles and a D^3 solve; 8,000 is about 0.5 GB.
MAX_PARAMS = 8000
# Lipschitz constant of the softmax Jacobian diag(p) - pp^T in the logits (operator norm):
# its derivative along a unit u is diag(p') - p'p^T - pp'^T with ||p'|| <= 1/2, so at most 3/2.
GAMMA = 1.5


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer; Newton-type methods update the "
                          "last linear layer on frozen features, so the model needs one")
    return layers[-1]


@torch.no_grad()
def features(model: nn.Module, data: ArrayDataset | torch.Tensor, device, batch_size: int = 1024) -> torch.Tensor:
    """Inputs of the last linear layer, float64, with a column of ones when the layer has a bias."""
    layer = last_linear(model)
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach().double().cpu()))
    model.to(device).eval()
    x = data.x if isinstance(data, ArrayDataset) else data
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        hook.remove()
    phi = torch.cat(seen) if seen else torch.empty(0, layer.in_features, dtype=torch.float64)
    if layer.bias is not None:
        phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=torch.float64)], dim=1)
    return phi


def head(model: nn.Module) -> torch.Tensor:
    layer = last_linear(model)
    w = layer.weight.detach().double().cpu()
    return torch.cat([w, layer.bias.detach().double().cpu()[:, None]], dim=1) if layer.bias is not None else w


def with_head(model: nn.Module, w: torch.Tensor) -> nn.Module:
    """A copy of `model` whose last linear layer is `w` (same layout as `head`)."""
    new = clone(model)
    layer = last_linear(new)
    with torch.no_grad():
        layer.weight.copy_(w[:, :layer.in_features].to(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(w[:, -1].to(layer.bias))
    return new


def check_size(w: torch.Tensor) -> None:
    if w.numel() > MAX_PARAMS:
        raise ConfigError(f"the last linear layer has {w.numel()} parameters; an exact Hessian is kept only up to "
                          f"{MAX_PARAMS} (it is D x D). Use a narrower head (model.hidden) or fewer input features "
                          "(model.name = 'logistic' with model.pool > 1)")


def grad_sum(w: torch.Tensor, phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over samples of the cross-entropy gradient in W: (softmax - onehot)^T phi, shape (K, d + 1)."""
    p = torch.softmax(phi @ w.T, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return p.T @ phi


def loss_mean(w: torch.Tensor, phi: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(phi @ w.T, y)) if len(y) else 0.0


def hessian_sum(w: torch.Tensor, phi: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Sum over samples of the cross-entropy Hessian in vec(W): sum_i (diag p_i - p_i p_i^T) kron phi_i phi_i^T.

    Written as block-diag(sum_i p_ia phi_i phi_i^T) - G^T G with rows G_i = p_i kron phi_i: two large
    matrix products instead of K^2 small ones.
    """
    k, d = w.shape
    out = torch.zeros(k * d, k * d, dtype=torch.float64)
    for start in range(0, len(phi), chunk):
        x = phi[start:start + chunk]
        p = torch.softmax(x @ w.T, dim=1)
        diag = torch.einsum("na,ni,nj->aij", p, x, x)
        for a in range(k):
            out[a * d:(a + 1) * d, a * d:(a + 1) * d] += diag[a]
        g = (p[:, :, None] * x[:, None, :]).reshape(len(x), k * d)
        out -= g.T @ g
    return out


def solve(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """H^-1 g for a symmetric positive definite H (g shaped like W)."""
    try:
        chol = torch.linalg.cholesky(h)
    except RuntimeError:
        raise ConfigError("the Hessian of the last layer is not positive definite; train with weight_decay > 0 "
                          "(the L2 penalty is what makes the problem strongly convex)") from None
    return torch.cholesky_solve(g.reshape(-1, 1), chol).reshape(g.shape)


def retain_grad_from_optimum(w: torch.Tensor, phi_f: torch.Tensor, y_f: torch.Tensor, n: int, lam: float) -> torch.Tensor:
    """Gradient of the retain objective at w, from the forget set alone, assuming w minimises the full objective.

    At the optimum sum_D grad CE = -n lam w, so sum_retain grad CE = -n lam w - sum_forget grad CE and
    grad L_retain(w) = -(n_f lam w + sum_forget grad CE) / n_r (Guo et al.'s Delta, up to sign and scale).
    """
    n_f = len(y_f)
    return -(n_f * lam * w + grad_sum(w, phi_f, y_f)) / (n - n_f)


def residual_bound(phi: torch.Tensor, step: torch.Tensor) -> float:
    """Data-dependent bound on ||sum_i grad CE_i(w + step)|| left by an exact Newton step (Guo et al., Cor. 1).

    The step changes the logits of sample i by u_i = step phi_i; the Taylor remainder of the softmax is at most
    GAMMA/2 ||u_i||^2, so the residual is at most GAMMA/2 * ||Phi||_2 * sqrt(sum_i ||u_i||^4).
    """
    u = phi @ step.T
    return GAMMA / 2 * float(torch.linalg.matrix_norm(phi, ord=2)) * math.sqrt(float((u.pow(2).sum(1) ** 2).sum()))
