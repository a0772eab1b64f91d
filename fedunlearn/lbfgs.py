"""The L-BFGS compact Hessian approximation from (step, gradient change) pairs: DeltaGrad and FedRecover both use it."""

from __future__ import annotations

from collections import deque

import torch


class LBFGS:
    """B v from the last `history` (dw, dg) pairs: the L-BFGS compact representation (Byrd, Nocedal,
    Schnabel 1994), B = sigma I - W M^-1 W^T with W = [Y, sigma S].

    In float64, because successive dw are nearly parallel and M is ill-conditioned; M is inverted
    only when a pair is added, so a product costs two thin matrix-vector products. W is never
    formed: its columns are the pairs' y and B0 s, so a product reads S and Y and the model holds
    2 x history vectors (FedRecover keeps one model per client).
    """

    def __init__(self, history: int):
        self.pairs: deque = deque(maxlen=history)
        self.sigma, self.s, self.y, self.m_inv = 0.0, None, None, None
        self.initial: torch.Tensor | None = None  # B0 = diag(initial) instead of sigma * I, when set

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, dw: torch.Tensor, dg: torch.Tensor) -> None:
        self.pairs.append((dw.double(), dg.double()))
        self._build()

    def set_initial(self, diagonal: torch.Tensor | None) -> None:
        """B0 = diag(diagonal) (None: sigma * I, the usual scaling from the last pair)."""
        self.initial = None if diagonal is None else diagonal.double()
        if self.pairs:
            self._build()

    def _build(self) -> None:
        s, y = (torch.stack(list(col), dim=1) for col in zip(*self.pairs))
        self.pairs = deque(zip(s.unbind(1), y.unbind(1)), maxlen=self.pairs.maxlen)  # views: one copy of S, Y
        sy = s.T @ y
        self.sigma = float(y[:, -1] @ s[:, -1]) / float(s[:, -1] @ s[:, -1])
        lower = torch.tril(sy, diagonal=-1)
        middle = torch.cat([torch.cat([-torch.diag(torch.diag(sy)), lower.T], 1),
                            torch.cat([lower, s.T @ self.b0(s)], 1)], 0)
        # a diagonal B0 with zeros can make S' B0 S singular; the pseudo-inverse then drops that direction
        invert = torch.linalg.inv if self.initial is None else torch.linalg.pinv
        self.s, self.y, self.m_inv = s, y, invert(middle)

    def b0(self, v: torch.Tensor) -> torch.Tensor:
        """B0 v (v a vector, or a matrix of column vectors)."""
        if self.initial is None:
            return self.sigma * v
        return (self.initial[:, None] if v.dim() == 2 else self.initial) * v

    def product(self, v: torch.Tensor) -> torch.Tensor:
        v, k = v.double(), self.s.shape[1]
        first = self.b0(v)
        # W' v and W z with W = [Y, B0 S], without W: B0 is diagonal, so (B0 S)' v = S' (B0 v)
        z = self.m_inv @ torch.cat([self.y.T @ v, self.s.T @ first])
        return (first - self.y @ z[:k] - self.b0(self.s @ z[k:])).float()

    def add_if_curved(self, dw: torch.Tensor, dg: torch.Tensor) -> bool:
        """Add the pair only where its curvature dw . dg is positive (else B stops being positive definite)."""
        if float(dw.double() @ dg.double()) > 1e-10 * float(dw.norm() * dg.norm()):
            self.add(dw, dg)
            return True
        return False
