"""The L-BFGS compact Hessian approximation from (step, gradient change) pairs: DeltaGrad and FedRecover both use it."""

from __future__ import annotations

from collections import deque

import torch


class LBFGS:
    """B v from the last `history` (dw, dg) pairs: the L-BFGS compact representation (Byrd, Nocedal,
    Schnabel 1994), B = sigma I - W M^-1 W^T with W = [Y, sigma S].

    In float64, because successive dw are nearly parallel and M is ill-conditioned; M is inverted
    only when a pair is added, so a product costs two thin matrix-vector products.
    """

    def __init__(self, history: int):
        self.pairs: deque = deque(maxlen=history)
        self.sigma, self.w, self.m_inv = 0.0, None, None

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, dw: torch.Tensor, dg: torch.Tensor) -> None:
        self.pairs.append((dw.double(), dg.double()))
        s, y = (torch.stack(list(col), dim=1) for col in zip(*self.pairs))
        sy = s.T @ y
        self.sigma = float(y[:, -1] @ s[:, -1]) / float(s[:, -1] @ s[:, -1])
        lower = torch.tril(sy, diagonal=-1)
        middle = torch.cat([torch.cat([-torch.diag(torch.diag(sy)), lower.T], 1),
                            torch.cat([lower, self.sigma * s.T @ s], 1)], 0)
        self.w, self.m_inv = torch.cat([y, self.sigma * s], 1), torch.linalg.inv(middle)

    def product(self, v: torch.Tensor) -> torch.Tensor:
        v = v.double()
        return (self.sigma * v - self.w @ (self.m_inv @ (self.w.T @ v))).float()

    def add_if_curved(self, dw: torch.Tensor, dg: torch.Tensor) -> bool:
        """Add the pair only where its curvature dw . dg is positive (else B stops being positive definite)."""
        if float(dw.double() @ dg.double()) > 1e-10 * float(dw.norm() * dg.norm()):
            self.add(dw, dg)
            return True
        return False
