"""How far an unlearned model is from the retrained one: in outputs (JS) and in parameters (L2)."""

from __future__ import annotations

import torch
from torch import nn


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean Jensen-Shannon divergence (natural log, in [0, ln 2]) between rows of two prob. matrices."""
    p, q = p.double().clamp_min(1e-12), q.double().clamp_min(1e-12)
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a.log() - b.log())).sum(1)  # noqa: E731
    return float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean())


def l2_distance(a: nn.Module | dict, b: nn.Module | dict) -> float:
    """L2 norm of the difference of all floating-point parameters and buffers.

    NaN when the two are different architectures (e.g. a SISA ensemble against one model).
    """
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return float("nan")
    total = 0.0
    for key, va in sa.items():
        if torch.is_floating_point(va) and "running" not in key:
            total += float(((va.detach().cpu().double() - sb[key].detach().cpu().double()) ** 2).sum())
    return total ** 0.5


def avg_gap(result: dict, reference: dict, keys=("test_acc", "retain_acc", "forget_acc", "mia_efficacy")) -> float:
    """Mean absolute difference from the retrained model, in percentage points."""
    gaps = [abs(result[k] - reference[k]) for k in keys if k in result and k in reference]
    return 100.0 * sum(gaps) / len(gaps)


def speedup(reference_seconds: float, seconds: float) -> float:
    return reference_seconds / seconds if seconds > 0 else float("inf")
